"""Training checkpoints: the model checkpoint plus the trainer state, replaced atomically."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from makevl.data.shop import load_shop
from makevl.keywords import build_vocabulary
from makevl.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from makevl.models.make import MakeModel
from makevl.training import checkpoint as ckpt
from makevl.training.checkpoint import load_trainer_state, save_training_checkpoint
from makevl.training.trainer import build_optimizer, rng_state, set_rng_state, train


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
        "config.yaml", "keywords.json", "model.safetensors", "trainer_state.json",
        "trainer_state.safetensors",
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

    monkeypatch.setattr(ckpt, "save_file", disk_full)  # dies after the weights were written
    with pytest.raises(OSError, match="No space left"):
        save_training_checkpoint(directory, model, cfg, vocab, {"step": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in directory.parent.iterdir()) == ["last"]  # no debris
    assert load_trainer_state(directory)["step"] == 1


def test_checkpoint_without_trainer_state_cannot_resume(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    directory = save_checkpoint(tmp_path / "best", model, cfg, vocab)
    with pytest.raises(CheckpointError, match="trainer_state.json and .* missing"):
        load_trainer_state(directory)


def test_next_save_removes_folders_of_saves_killed_midway(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    run = tmp_path / "run"
    save_training_checkpoint(run / "last", model, cfg, vocab, {"step": 1})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID is free now: the save it stands for can never finish
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = run / f".last.tmp-{dead.pid}"
        busy = run / f".best.tmp-{alive.pid}"  # another process saving right now
        for folder in (stale, busy):
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"half written")
        save_training_checkpoint(run / "last", model, cfg, vocab, {"step": 2})
        assert not stale.exists() and busy.exists()
        assert load_trainer_state(run)["step"] == 2
    finally:
        alive.kill()
        alive.wait()


def test_trainer_state_round_trips_every_type_it_holds(setup, tmp_path: Path) -> None:
    """Optimizer state (int keys, tuples, 0-d tensors), RNG states and None come back equal."""
    cfg, vocab, model = setup
    optimizer = build_optimizer(model, cfg)
    model.query_proj.weight.sum().backward()
    optimizer.step()
    random.random()
    state = {"optimizer": optimizer.state_dict(), "rng": [rng_state()], "best_recall": None,
             "bad_counts": {"unreadable image": 2}, "recall": float("nan")}  # fmt: skip
    save_training_checkpoint(tmp_path / "last", model, cfg, vocab, state)
    loaded = load_trainer_state(tmp_path / "last")

    saved_rng, loaded_rng = state["rng"][0], loaded["rng"][0]
    assert loaded_rng["python"] == saved_rng["python"]
    assert isinstance(loaded_rng["python"], tuple) and isinstance(loaded_rng["python"][1], tuple)
    assert loaded_rng["numpy"][0] == "MT19937"
    np.testing.assert_array_equal(loaded_rng["numpy"][1], saved_rng["numpy"][1])
    assert loaded_rng["numpy"][1].dtype == np.uint32 and loaded_rng["numpy"][2:] == saved_rng[
        "numpy"][2:]  # fmt: skip
    assert torch.equal(loaded_rng["torch"], saved_rng["torch"])
    set_rng_state(loaded_rng)  # accepted as is

    saved_opt, loaded_opt = state["optimizer"], loaded["optimizer"]
    assert loaded_opt["param_groups"] == saved_opt["param_groups"]
    assert loaded_opt["state"].keys() == saved_opt["state"].keys()  # ints, not "0", "1", ...
    for key, values in saved_opt["state"].items():
        assert all(torch.equal(values[k], loaded_opt["state"][key][k]) for k in values)
    fresh = build_optimizer(model, cfg)
    fresh.load_state_dict(loaded_opt)
    (key,) = saved_opt["state"]  # query_proj.weight, the one parameter with a gradient
    assert torch.equal(fresh.state_dict()["state"][key]["exp_avg"],
                       saved_opt["state"][key]["exp_avg"])  # fmt: skip
    assert loaded["best_recall"] is None and loaded["bad_counts"] == {"unreadable image": 2}
    assert math.isnan(loaded["recall"])


class PlantedPickle:
    """Unpickling this creates ``marker``: what a hostile file could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_is_never_unpickled(setup, tmp_path: Path) -> None:
    cfg, vocab, model = setup
    marker = tmp_path / "pwned"
    directory = save_checkpoint(tmp_path / "run" / "last", model, cfg, vocab)
    torch.save({"step": PlantedPickle(marker)}, directory / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="trainer_state.pt.*never loaded"):
        load_trainer_state(directory)
    assert not marker.exists()


def test_resume_never_unpickles_a_planted_trainer_state(demo40, tmp_path: Path, tiny_config):
    cfg = tiny_config(demo40, tmp_path / "run", "train.max_steps=2")
    train(cfg, stop_after=1)
    last, marker = tmp_path / "run" / "last", tmp_path / "pwned"
    state_files = {p.name: p.read_bytes() for p in last.glob("trainer_state*")}
    for name in state_files:  # only the planted file is left: resume refuses
        (last / name).unlink()
    torch.save({"global_batch": PlantedPickle(marker)}, last / "trainer_state.pt")
    with pytest.raises(CheckpointError, match="trainer_state.pt.*never loaded"):
        try:
            train(cfg, resume=True)
        finally:
            assert not marker.exists(), "resume unpickled the planted trainer_state.pt"

    for name, data in state_files.items():  # beside the real state, it is ignored
        (last / name).write_bytes(data)
    torch.save({"global_batch": PlantedPickle(marker)}, last / "trainer_state.pt")
    assert train(cfg, resume=True).step == 2
    assert not marker.exists()
