"""Checkpoints: one directory per checkpoint, written atomically.

A checkpoint directory holds everything a later stage needs, in open formats:

- ``model.safetensors``  the weights (memory bank included, it is a buffer)
- ``config.yaml``        the full run config, so the model can be rebuilt
- ``keywords.json``      the keyword vocabulary the keyword head predicts
- ``trainer_state.pt``   optimizer, scheduler, position in the data, RNG states
  (only in ``last/``; ``best/`` is for eval/index/serve)

Writes go to a temporary sibling directory that is renamed into place, so a
crash or a full disk mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_model, save_model

from makevl.config import RunConfig, load_config

if TYPE_CHECKING:
    from makevl.keywords import KeywordVocab
    from makevl.models.make import MakeModel

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
KEYWORDS = "keywords.json"
TRAINER_STATE = "trainer_state.pt"


class CheckpointError(FileNotFoundError):
    """A path that does not hold a usable checkpoint; the message says what is missing."""


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(
    directory: str | Path,
    model: MakeModel,
    cfg: RunConfig,
    vocab: KeywordVocab,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``directory``, replacing any previous one atomically."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS))
        cfg.save(tmp / CONFIG)
        vocab.save(tmp / KEYWORDS)
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE)
        for path in tmp.iterdir():
            _fsync(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Swap: current -> .old, tmp -> current, drop .old. A crash between the two
    # renames leaves .old, which resolve_checkpoint() falls back to.
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (its ``best/``, else ``last/``)."""
    path = Path(path)
    candidates = [path, path / "best", path / "last"]
    for candidate in candidates:
        if (candidate / WEIGHTS).is_file():
            return candidate
        old = candidate.with_name(f".{candidate.name}.old")
        if not candidate.exists() and (old / WEIGHTS).is_file():
            log.warning("%s: using %s left by an interrupted save", candidate, old)
            return old
    raise CheckpointError(
        f"no checkpoint at {path}: expected {WEIGHTS} there or in its best/ or last/ folder"
    )


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    state_path = resolve_checkpoint(path) / TRAINER_STATE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path} missing: cannot resume from this checkpoint")
    # Our own file, holding RNG states (tuples) as well as tensors.
    return torch.load(state_path, map_location="cpu", weights_only=False)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[MakeModel, RunConfig, KeywordVocab]:
    """Rebuild the trained model, its config and its keyword vocabulary (in eval mode)."""
    from makevl.keywords import KeywordVocab
    from makevl.models.make import MakeModel

    directory = resolve_checkpoint(path)
    for name in (CONFIG, KEYWORDS):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: {name} missing")
    cfg = load_config(directory / CONFIG)
    vocab = KeywordVocab.load(directory / KEYWORDS)
    model = MakeModel.from_config(cfg, num_keywords=len(vocab.keywords))
    missing, unexpected = load_model(model, str(directory / WEIGHTS), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{directory / WEIGHTS} does not match the model its config builds: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.to(device).eval()
    return model, cfg, vocab
