"""Streaming pair shards: every pair once per epoch, on any number of ranks and workers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from helpers import write_pair_shop
from makevl.data.shard import ShardManifest, parquet_rows, shard_shop
from makevl.keywords import KeywordVocab
from makevl.training import streaming
from makevl.training.streaming import StreamingPairDataset


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
