"""Checkpoints round-trip, and a crash while writing never costs the previous one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from makevl.data.shop import load_shop
from makevl.keywords import build_vocabulary
from makevl.models.make import MakeModel
from makevl.training import checkpoint as ckpt
from makevl.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_trainer_state,
    resolve_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def setup(demo40: Path, tmp_path: Path, tiny_config):
    cfg = tiny_config(demo40, tmp_path / "run")
    vocab = build_vocabulary(load_shop(cfg.data).products_in("train"))
    torch.manual_seed(0)
    model = MakeModel.from_config(cfg, num_keywords=len(vocab))
    return cfg, vocab, model


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    directory = save_checkpoint(tmp_path / "run" / "last", model, cfg, vocab, {"step": 7})
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.yaml", "keywords.json", "model.safetensors", "trainer_state.pt",
    ]  # fmt: skip
    loaded, loaded_cfg, loaded_vocab = load_checkpoint(tmp_path / "run")  # a run dir works too
    assert_same_weights(model, loaded)
    assert loaded_cfg == cfg and loaded_vocab.keywords == vocab.keywords
    assert not loaded.training
    assert load_trainer_state(directory)["step"] == 7


def test_crash_while_writing_keeps_previous_checkpoint(setup, tmp_path: Path, monkeypatch) -> None:
    cfg, vocab, model = setup
    directory = tmp_path / "run" / "last"
    save_checkpoint(directory, model, cfg, vocab, {"step": 1})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for param in model.parameters():
            param.add_(1.0)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)  # dies after the weights were written
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(directory, model, cfg, vocab, {"step": 2})
    monkeypatch.undo()

    assert sorted(p.name for p in directory.parent.iterdir()) == ["last"]  # no debris
    loaded, _, _ = load_checkpoint(directory)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())
    assert load_trainer_state(directory)["step"] == 1


def test_crash_between_renames_falls_back_to_previous(setup, tmp_path: Path, monkeypatch) -> None:
    cfg, vocab, model = setup
    directory = tmp_path / "run" / "last"
    save_checkpoint(directory, model, cfg, vocab, {"step": 1})
    real_replace = os.replace
    calls = []

    def replace_then_die(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old one is moved aside, the new one not yet in place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(directory, model, cfg, vocab, {"step": 2})
    monkeypatch.undo()
    assert not directory.exists()
    assert resolve_checkpoint(tmp_path / "run").name == ".last.old"
    assert load_trainer_state(tmp_path / "run" / "last")["step"] == 1
    load_checkpoint(tmp_path / "run")  # still usable


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at .*model.safetensors"):
        load_checkpoint(tmp_path)
