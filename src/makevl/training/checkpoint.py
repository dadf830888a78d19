"""Training checkpoints: a model checkpoint plus the state needed to resume.

``last/`` holds, beside the model files of :mod:`makevl.models.checkpoint`,
``trainer_state.pt``: optimizer, scheduler, position in the data, RNG states and
the memory bank (its buffers are not in the weights file, they are
non-persistent). ``best/`` is a plain model checkpoint, for eval/index/serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from makevl.config import RunConfig
from makevl.models.checkpoint import CheckpointError, resolve_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from makevl.keywords import KeywordVocab
    from makevl.models.make import MakeModel

TRAINER_STATE = "trainer_state.pt"


def save_training_checkpoint(
    directory: str | Path,
    model: MakeModel,
    cfg: RunConfig,
    vocab: KeywordVocab,
    trainer_state: dict[str, Any],
) -> Path:
    """A model checkpoint with ``trainer_state.pt`` beside it, written atomically."""
    return save_checkpoint(
        directory,
        model,
        cfg,
        vocab,
        lambda folder: torch.save(trainer_state, folder / TRAINER_STATE),
    )


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    state_path = resolve_checkpoint(path) / TRAINER_STATE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path} missing: cannot resume from this checkpoint")
    # Our own file, holding RNG states (tuples) as well as tensors.
    return torch.load(state_path, map_location="cpu", weights_only=False)
