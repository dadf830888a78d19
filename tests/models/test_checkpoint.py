"""Model checkpoints round-trip, and a crash while writing never costs the previous one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL_OVERRIDES
from makevl.config import load_config
from makevl.data.shop import read_catalog
from makevl.files import file_sha256
from makevl.keywords import build_vocabulary
from makevl.models import checkpoint as ckpt
from makevl.models.checkpoint import (
    CheckpointError,
    checkpoint_hash,
    load_checkpoint,
    resolve_checkpoint,
    save_checkpoint,
)
from makevl.models.make import MakeModel


@pytest.fixture
def setup(small_catalog: Path):
    cfg = load_config(
        None,
        [
            "data.preset=custom",
            f"data.catalog={small_catalog}",
            f"data.queries={small_catalog.parent / 'queries.csv'}",
            *TINY_MODEL_OVERRIDES,
        ],
    )
    products, _ = read_catalog(small_catalog)
    vocab = build_vocabulary(products)
    torch.manual_seed(0)
    return cfg, vocab, MakeModel.from_config(cfg, num_keywords=len(vocab))


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    directory = save_checkpoint(tmp_path / "run" / "best", model, cfg, vocab)
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.yaml", "keywords.json", "model.safetensors",
    ]  # fmt: skip
    loaded, loaded_cfg, loaded_vocab = load_checkpoint(tmp_path / "run")  # a run dir works too
    assert_same_weights(model, loaded)
    assert loaded_cfg == cfg and loaded_vocab.keywords == vocab.keywords
    assert not loaded.training
    assert checkpoint_hash(tmp_path / "run") == file_sha256(directory / "model.safetensors")


def test_write_extra_adds_files_before_the_swap(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    directory = save_checkpoint(
        tmp_path / "last", model, cfg, vocab, lambda folder: (folder / "extra.txt").write_text("x")
    )
    assert (directory / "extra.txt").read_text() == "x"


def test_crash_while_writing_keeps_previous_checkpoint(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    directory = tmp_path / "run" / "best"
    save_checkpoint(directory, model, cfg, vocab)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)

    def disk_full(folder: Path) -> None:  # dies after the weights were written
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(directory, model, cfg, vocab, disk_full)

    assert sorted(p.name for p in directory.parent.iterdir()) == ["best"]  # no debris
    loaded, _, _ = load_checkpoint(directory)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())


def test_crash_between_renames_falls_back_to_previous(setup, tmp_path: Path, monkeypatch) -> None:
    cfg, vocab, model = setup
    directory = tmp_path / "run" / "best"
    save_checkpoint(directory, model, cfg, vocab)
    real_replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old one is moved aside, the new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr("makevl.files.os.replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(directory, model, cfg, vocab)
    monkeypatch.undo()
    assert not directory.exists()
    assert resolve_checkpoint(tmp_path / "run").name == ".best.old"
    load_checkpoint(tmp_path / "run")  # still usable


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at .*model.safetensors"):
        load_checkpoint(tmp_path)


def test_missing_config_is_a_clear_error(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    directory = save_checkpoint(tmp_path / "best", model, cfg, vocab)
    (directory / ckpt.CONFIG).unlink()
    with pytest.raises(CheckpointError, match="config.yaml missing"):
        load_checkpoint(directory)


def test_a_shallower_query_tower_comes_back_from_its_checkpoint(setup, tmp_path: Path) -> None:
    cfg, vocab, _ = setup
    cfg.model.query_layers = 1
    torch.manual_seed(0)
    model = MakeModel.from_config(cfg, num_keywords=len(vocab))
    assert len(model.query_encoder.model.encoder.layer) == 1
    assert len(model.title_encoder.model.encoder.layer) == 2  # the title tower keeps its depth
    save_checkpoint(tmp_path / "run" / "best", model, cfg, vocab)
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "run")
    assert loaded_cfg.model.query_layers == 1
    assert_same_weights(model, loaded)
    cfg.model.shared_query_title_encoder = True
    with pytest.raises(ValueError, match="query_layers needs a query tower of its own"):
        MakeModel.from_config(cfg, num_keywords=len(vocab))


def test_the_spelling_corrector_travels_with_the_checkpoint(setup, small_catalog, tmp_path):
    from makevl.data.shop import read_catalog
    from makevl.spelling import build_spelling

    cfg, vocab, model = setup
    cfg.model.spelling_correction = True
    model.spelling = build_spelling(read_catalog(small_catalog)[0], [])
    directory = save_checkpoint(tmp_path / "run" / "best", model, cfg, vocab)
    assert (directory / "spelling.json").is_file()
    loaded = load_checkpoint(directory)[0]
    assert loaded.spelling.counts == model.spelling.counts
    assert loaded.spelling.correct("lether handbga") == "leather handbag"
    # the query tower's own words are never "corrected": "gray" stays, one edit from "grey"
    assert "gray" in loaded.spelling.known and loaded.spelling.correct_word("gray") == "gray"
    assert not loaded.spelling.english_fallback
    copied = ckpt.copy_checkpoint(directory, tmp_path / "copy")
    assert (copied / "spelling.json").read_bytes() == (directory / "spelling.json").read_bytes()
    cfg.model.spelling_english_fallback = True  # the run's config says them, not the file
    cfg.model.spelling_real_word_ratio = 100.0
    directory = save_checkpoint(tmp_path / "run2" / "best", model, cfg, vocab)
    spelling = load_checkpoint(directory)[0].spelling
    assert spelling.english_fallback and spelling.real_word_ratio == 100.0

    (directory / "spelling.json").unlink()
    with pytest.raises(CheckpointError, match="spelling.json missing .*spelling_correction"):
        load_checkpoint(directory)
    (directory / "spelling.json").write_text("{}")
    with pytest.raises(CheckpointError, match="spelling.json: not a spelling file"):
        load_checkpoint(directory)


def test_a_checkpoint_without_spelling_correction_has_no_corrector(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    assert not cfg.model.spelling_correction
    directory = save_checkpoint(tmp_path / "best", model, cfg, vocab)
    assert not (directory / "spelling.json").exists()
    assert load_checkpoint(directory)[0].spelling is None


def test_the_gate_temperature_travels_with_the_weights(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    model.gate_temperature.fill_(3.0)
    save_checkpoint(tmp_path / "run" / "best", model, cfg, vocab)
    assert float(load_checkpoint(tmp_path / "run")[0].gate_temperature) == 3.0


def test_weights_saved_before_the_gate_temperature_load_with_1(setup, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    cfg, vocab, model = setup
    model.gate_temperature.fill_(3.0)
    directory = save_checkpoint(tmp_path / "run" / "best", model, cfg, vocab)
    weights = load_file(directory / "model.safetensors")
    del weights["gate_temperature"]
    save_file(weights, directory / "model.safetensors")
    assert float(load_checkpoint(directory)[0].gate_temperature) == 1.0
    del weights["logit_scale"]  # any other missing weight is still an error
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing.*logit_scale"):
        load_checkpoint(directory)
