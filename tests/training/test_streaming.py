"""Streaming pair shards: every pair once per epoch, on any number of ranks and workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from helpers import write_pair_shop
from makevl.config import DataConfig
from makevl.data.shard import ShardError, ShardManifest, parquet_rows, shard_shop
from makevl.keywords import KeywordVocab
from makevl.training import data, streaming
from makevl.training.checkpoint import load_trainer_state
from makevl.training.streaming import (
    StreamingPairDataset,
    fill_feature_caches,
    open_train_shards,
)
from makevl.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def to_tensor(image) -> torch.Tensor:
    return torch.zeros(3, 8, 8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 pair shards of 48 pairs (24 train products, 2 queries each)."""
    root = tmp_path_factory.mktemp("stream")
    catalog = write_pair_shop(root / "shop", train_products=24)
    shard_shop([catalog], [catalog.parent / "queries.csv"], root / "shards", 4,
               progress=lambda _: None)  # fmt: skip
    return root / "shards"


def stream(shards: Path, batch_size: int, world_size: int = 1, workers: int = 0, epoch: int = 0,
           start_batch: int = 0, seed: int = 0) -> list[list[str]]:  # fmt: skip
    """Global batches of pair ids, each the concatenation of the ranks' slices."""
    manifest = ShardManifest.load(shards)
    vocab = KeywordVocab.load(shards / "keywords.json")
    per_rank = []
    for rank in range(world_size):
        dataset = StreamingPairDataset(manifest, vocab.index, to_tensor, batch_size, seed, rank,
                                       world_size)  # fmt: skip
        dataset.set_position(epoch, start_batch)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers,
                            collate_fn=lambda samples: [s["pair"] for s in samples])  # fmt: skip
        per_rank.append(list(loader))
    return [[pair for part in slices for pair in part] for slices in zip(*per_rank, strict=True)]


def test_one_epoch_has_every_pair_once_whatever_the_ranks_and_workers(shards: Path):
    one = stream(shards, batch_size=8)
    pairs = [pair for batch in one for pair in batch]
    assert len(pairs) == 48 and len(set(pairs)) == 48
    assert {p.split(":")[0] for p in pairs} == {"0", "1", "2", "3"}
    assert stream(shards, batch_size=4, world_size=2, workers=2) == one
    assert stream(shards, batch_size=2, world_size=4, workers=1) == one


def test_samples_carry_the_shard_row(shards: Path):
    manifest = ShardManifest.load(shards)
    vocab = KeywordVocab.load(shards / "keywords.json")
    dataset = StreamingPairDataset(manifest, vocab.index, to_tensor, batch_size=48)
    rows = {
        f"{i}:{n}": row for i in range(4) for n, row in enumerate(parquet_rows(manifest.path(i)))
    }
    for sample in next(iter(dataset)):
        row = rows[sample["pair"]]
        assert (sample["query"], sample["title"]) == (row["query"], row["title"])
        assert sample["keyword_ids"] == [vocab.index[k] for k in row["keywords"]]
        assert sample["pixel_values"].shape == (3, 8, 8)


def test_epochs_reshuffle_and_the_remainder_is_dropped(shards: Path):
    first, second = stream(shards, batch_size=5), stream(shards, batch_size=5, epoch=1)
    a, b = [p for x in first for p in x], [p for x in second for p in x]
    assert len(a) == len(set(a)) == len(b) == len(set(b)) == 45  # 9 batches of 5
    assert a != b
    assert stream(shards, batch_size=5, seed=1) != first


def test_resuming_mid_epoch_continues_the_same_stream(shards: Path):
    full = stream(shards, batch_size=4, world_size=2)
    assert stream(shards, batch_size=4, world_size=2, workers=2, start_batch=2) == full[2:]


def test_a_worker_reads_only_the_shards_its_batches_touch(shards: Path, monkeypatch):
    opened = Counter()
    read = streaming.read_shard
    monkeypatch.setattr(
        streaming, "read_shard", lambda path: opened.update([path.name]) or read(path)
    )
    manifest = ShardManifest.load(shards)
    vocab = KeywordVocab.load(shards / "keywords.json")
    dataset = StreamingPairDataset(manifest, vocab.index, to_tensor, batch_size=8)
    dataset.set_position(0, start_batch=5)  # the last batch: the end of the last shard or two
    assert len(list(dataset)) == 1
    assert 1 <= sum(opened.values()) <= 2 < len(manifest.shards)


# ------------------------------------------------------------------ through the trainer

# Run under torchrun (or alone): records every batch a rank trains on, as pair ids,
# one JSON line per batch in $PAIR_LOG.<rank>; with $KILL_AT_BATCH, the process
# SIGKILLs itself when asked for that batch (1-based), as a crash would.
RECORDING_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    from makevl.config import load_config
    from makevl.training import data
    from makevl.training.trainer import train

    log = os.environ["PAIR_LOG"] + "." + os.environ.get("RANK", "0")
    kill_at = int(os.environ.get("KILL_AT_BATCH", "0"))
    collate, asked = data.Collator.__call__, [0]

    def recording_collate(self, samples):
        asked[0] += 1
        if asked[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        with open(log, "a") as handle:
            handle.write(json.dumps([s["pair"] for s in samples]) + "\\n")
        return collate(self, samples)

    data.Collator.__call__ = recording_collate
    train(load_config(sys.argv[1], sys.argv[3:]), resume=sys.argv[2] == "resume")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # past train(): see test_distributed.SCRIPT on the C++ teardown abort
    """
)


def all_pairs(shards: Path) -> set[str]:
    manifest = ShardManifest.load(shards)
    return {f"{i}:{row}" for i, shard in enumerate(manifest.shards) for row in range(shard.rows)}


def test_training_sees_every_pair_once_per_epoch(shards, tmp_path, tiny_config, monkeypatch):
    trained: list[list[str]] = []
    collate = data.Collator.__call__

    def recording_collate(self, samples):
        trained.append([s["pair"] for s in samples])
        return collate(self, samples)

    monkeypatch.setattr(data.Collator, "__call__", recording_collate)
    catalog = shards.parent / "shop" / "catalog.csv"
    cfg = tiny_config(catalog, tmp_path / "run", f"data.train_shards={shards}", "train.epochs=2")
    result = train(cfg)
    assert result.step == 12 and result.bad_samples == {}  # 48 pairs: 6 batches of 8 an epoch
    epochs = [[p for batch in trained[:6] for p in batch], [p for b in trained[6:] for p in b]]
    assert len(trained) == 12
    for pairs in epochs:
        assert len(pairs) == 48 and set(pairs) == all_pairs(shards)
    assert epochs[0] != epochs[1]
    assert result.last_recall is not None  # validated on the val products the shards set aside


def test_streaming_resume_gives_identical_weights(shards, tmp_path, tiny_config):
    settings = (f"data.train_shards={shards}", "data.num_workers=2", "train.grad_accum_steps=2",
                "model.freeze_image=true", "train.max_steps=5", "train.epochs=2")  # fmt: skip
    catalog = shards.parent / "shop" / "catalog.csv"
    straight = train(tiny_config(catalog, tmp_path / "straight", *settings))
    split = tiny_config(catalog, tmp_path / "split", *settings)
    assert train(split, stop_after=2).step == 2  # mid-epoch: 3 steps of 2 batches an epoch
    assert train(split, resume=True).step == straight.step == 5
    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(tmp_path / "split" / "last" / "model.safetensors")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.slow
def test_two_ranks_see_every_pair_once_per_epoch_across_a_kill_and_resume(shards, tmp_path,
                                                                         tiny_config):  # fmt: skip
    script = tmp_path / "run_train.py"
    script.write_text(RECORDING_SCRIPT)
    catalog = shards.parent / "shop" / "catalog.csv"
    cfg = tiny_config(catalog, tmp_path / "run", f"data.train_shards={shards}", "train.epochs=2",
                      "train.batch_size=4", "train.eval_every=4", "model.freeze_image=true")  # fmt: skip
    config_file = tmp_path / "config.yaml"
    cfg.save(config_file)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MAKEVL_CACHE_DIR": str(tmp_path / "cache"),
    }

    def torchrun(mode: str, log: str, **extra: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",  # a free port
                   "--nproc_per_node=2", str(script), str(config_file), mode]  # fmt: skip
        return subprocess.run(command, env={**env, "PAIR_LOG": str(tmp_path / log), **extra},
                              check=False, capture_output=True, text=True, timeout=300)  # fmt: skip

    # 48 pairs, global batch 8: 6 steps an epoch, checkpoints at steps 4, 8, 12.
    killed = torchrun("start", "first", KILL_AT_BATCH="10")  # after step 9, in epoch 2
    assert killed.returncode != 0
    assert load_trainer_state(tmp_path / "run" / "last")["step"] == 8
    resumed = torchrun("resume", "second")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert load_trainer_state(tmp_path / "run" / "last")["step"] == 12

    batches = {}
    for rank in (0, 1):
        first = [json.loads(line) for line in (tmp_path / f"first.{rank}").read_text().splitlines()]
        second = [
            json.loads(line) for line in (tmp_path / f"second.{rank}").read_text().splitlines()
        ]
        assert len(first) == 9 and len(second) == 4
        assert second[0] == first[8]  # step 9 was lost with the kill and is redone
        batches[rank] = first[:8] + second  # what the final weights were trained on
    for epoch in (0, 1):
        seen = [pair for rank in (0, 1) for batch in batches[rank][6 * epoch : 6 * epoch + 6]
                for pair in batch]  # fmt: skip
        assert len(seen) == 48 and set(seen) == all_pairs(shards)


def test_shards_split_otherwise_than_the_run_are_refused(shards: Path):
    assert open_train_shards(DataConfig(train_shards=str(shards))).rows == 48
    with pytest.raises(ShardError, match="data.split_seed"):
        open_train_shards(DataConfig(train_shards=str(shards), split_seed=3))
    with pytest.raises(ShardError, match="sparse_titles"):
        open_train_shards(DataConfig(train_shards=str(shards), sparse_titles=True))


class TinyImageTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.linear(pixels.mean((2, 3)))
        return pooled[:, None, :].repeat(1, 2, 1), pooled


def test_frozen_image_features_are_cached_shard_by_shard(shards: Path, tmp_path: Path):
    manifest = ShardManifest.load(shards)
    tower = TinyImageTower()
    image = (tower, to_tensor, ("image", "tiny", 8))
    sources, _ = fill_feature_caches(manifest, tmp_path, torch.device("cpu"), image=image)
    assert len(sources) == 4 and len({folder for folder, _ in sources}) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"shard-{s.sha256[:20]}" for s in manifest.shards
    )

    def refuse(pixels):
        raise AssertionError("encoded again")

    tower.forward = refuse  # everything is cached: the tower is not run again
    again, _ = fill_feature_caches(manifest, tmp_path, torch.device("cpu"), image=image)
    assert again == sources
    vocab = KeywordVocab.load(shards / "keywords.json")
    dataset = StreamingPairDataset(manifest, vocab.index, to_tensor, 48, image_features=sources)
    samples = next(iter(dataset))
    assert len(samples) == 48
    assert all(s["image_tokens"].shape == (2, 4) and "pixel_values" not in s for s in samples)


def test_the_shards_spelling_corrector_goes_into_the_checkpoint(shards, tmp_path, tiny_config):
    from makevl.training.trainer import TrainingError

    catalog = shards.parent / "shop" / "catalog.csv"
    settings = (f"data.train_shards={shards}", "model.spelling_correction=true",
                "train.max_steps=1")  # fmt: skip
    train(tiny_config(catalog, tmp_path / "run", *settings))
    saved = tmp_path / "run" / "last" / "spelling.json"
    assert saved.read_bytes() == (shards / "spelling.json").read_bytes()

    old = tmp_path / "old-shards"  # shards written before makevl counted words
    old.mkdir()
    for path in shards.iterdir():
        if path.name != "spelling.json":
            os.symlink(path, old / path.name)
    with pytest.raises(TrainingError, match="spelling.json missing .*shard the data again"):
        train(tiny_config(catalog, tmp_path / "run2", f"data.train_shards={old}",
                          "model.spelling_correction=true"))  # fmt: skip
