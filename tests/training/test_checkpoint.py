"""Training checkpoints: the model checkpoint plus the trainer state, replaced atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from makevl.data.shop import load_shop
from makevl.keywords import build_vocabulary
from makevl.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from makevl.models.make import MakeModel
from makevl.training import checkpoint as ckpt
from makevl.training.checkpoint import load_trainer_state, save_training_checkpoint


@pytest.fixture
def setup(demo40: Path, tmp_path: Path, tiny_config):
    cfg = tiny_config(demo40, tmp_path / "run")
    vocab = build_vocabulary(load_shop(cfg.data).products_in("train"))
    torch.manual_seed(0)
    model = MakeModel.from_config(cfg, num_keywords=len(vocab))
    return cfg, vocab, model


def test_round_trip(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    directory = save_training_checkpoint(tmp_path / "run" / "last", model, cfg, vocab, {"step": 7})
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.yaml", "keywords.json", "model.safetensors", "trainer_state.pt",
    ]  # fmt: skip
    load_checkpoint(tmp_path / "run")  # the model checkpoint inside is complete
    assert load_trainer_state(tmp_path / "run")["step"] == 7


def test_failed_trainer_state_write_keeps_previous_checkpoint(
    setup, tmp_path: Path, monkeypatch
) -> None:
    cfg, vocab, model = setup
    directory = tmp_path / "run" / "last"
    save_training_checkpoint(directory, model, cfg, vocab, {"step": 1})

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)  # dies after the weights were written
    with pytest.raises(OSError, match="No space left"):
        save_training_checkpoint(directory, model, cfg, vocab, {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in directory.parent.iterdir()) == ["last"]  # no debris
    assert load_trainer_state(directory)["step"] == 1


def test_checkpoint_without_trainer_state_cannot_resume(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    directory = save_checkpoint(tmp_path / "best", model, cfg, vocab)
    with pytest.raises(CheckpointError, match="trainer_state.pt missing"):
        load_trainer_state(directory)
