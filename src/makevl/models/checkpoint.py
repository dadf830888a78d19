"""Model checkpoints: one directory per checkpoint, written atomically.

A checkpoint directory holds what a later stage needs to rebuild the model, in
open formats:

- ``model.safetensors``  the weights
- ``config.yaml``        the full run config, so the model can be rebuilt
- ``keywords.json``      the keyword vocabulary the keyword head predicts
- ``spelling.json``      the shop's word counts the query spelling corrector uses
                         (only with ``model.spelling_correction``)

Training adds its own state file (see :mod:`makevl.training.checkpoint`).
Writes go to a temporary sibling directory ``.NAME.tmp-PID`` that is swapped
into place, so a crash or a full disk mid-write leaves the previous checkpoint
intact; the next save removes such folders whose process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_model, save_model

from makevl.config import RunConfig, load_config
from makevl.files import file_sha256, fsync_tree, swap_into_place
from makevl.spelling import SPELLING, SpellingCorrector, config_rules

if TYPE_CHECKING:
    from makevl.keywords import KeywordVocab
    from makevl.models.make import MakeModel

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
KEYWORDS = "keywords.json"
MODEL_FILES = (WEIGHTS, CONFIG, KEYWORDS)  # what eval, index and serve need
OPTIONAL_MODEL_FILES = (SPELLING,)  # copied with them where the checkpoint has them


class CheckpointError(FileNotFoundError):
    """A path that does not hold a usable checkpoint; the message says what is missing."""


def save_checkpoint(
    directory: str | Path,
    model: MakeModel,
    cfg: RunConfig,
    vocab: KeywordVocab,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write a checkpoint to ``directory``, replacing any previous one atomically.

    ``write_extra(folder)`` may add files (e.g. the trainer state) before the swap.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_saves(directory.parent)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS))
        cfg.save(tmp / CONFIG)
        vocab.save(tmp / KEYWORDS)
        if model.spelling is not None:
            model.spelling.save(tmp / SPELLING)
        if write_extra is not None:
            write_extra(tmp)
        fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_into_place(tmp, directory)  # an interrupted swap leaves .old, see resolve_checkpoint
    return directory


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_saves(folder: str | Path) -> list[Path]:
    """Remove the ``.NAME.tmp-PID`` folders in ``folder`` left by saves killed midway.

    A folder whose process still runs is another save in progress and is kept.
    """
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d unfinished checkpoint folders: %s", len(removed), removed)
    return removed


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (its ``best/``, else ``last/``)."""
    path = Path(path)
    for candidate in (path, path / "best", path / "last"):
        if (candidate / WEIGHTS).is_file():
            return candidate
        old = candidate.with_name(f".{candidate.name}.old")
        if not candidate.exists() and (old / WEIGHTS).is_file():
            log.warning("%s: using %s left by an interrupted save", candidate, old)
            return old
    raise CheckpointError(
        f"no checkpoint at {path}: expected {WEIGHTS} there or in its best/ or last/ folder"
    )


def copy_checkpoint(path: str | Path, target: str | Path) -> Path:
    """Copy a checkpoint's model files (not the trainer state) into folder ``target``.

    Files are hard-linked where the filesystem allows: checkpoints are replaced
    by renames, never rewritten in place, so a link stays the bytes it was.
    """
    source, target = resolve_checkpoint(path), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    optional = [name for name in OPTIONAL_MODEL_FILES if (source / name).is_file()]
    for name in [*MODEL_FILES, *optional]:
        if not (source / name).is_file():
            raise CheckpointError(f"{source}: {name} missing")
        try:
            os.link(source / name, target / name)
        except OSError:  # another filesystem, or links not allowed
            shutil.copyfile(source / name, target / name)
    fsync_tree(target)
    return target


def checkpoint_hash(path: str | Path) -> str:
    """SHA-256 of a checkpoint's weights file (a checkpoint or run directory)."""
    return file_sha256(resolve_checkpoint(path) / WEIGHTS)


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
    load_weights(model, directory / WEIGHTS)
    model.spelling = load_spelling(directory, cfg, model)
    model.to(device).eval()
    return model, cfg, vocab


def load_weights(model: MakeModel, path: Path) -> None:
    """Load a weights file into ``model``; it must match the model its config builds.
    Files saved before MA's gate temperature existed load with the temperature at 1."""
    missing, unexpected = load_model(model, str(path), strict=False)
    missing = [name for name in missing if name != "gate_temperature"]
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the model its config builds: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )


def load_spelling(directory: Path, cfg: RunConfig, model: MakeModel) -> SpellingCorrector | None:
    """The checkpoint's spelling corrector where its config turns correction on."""
    if not cfg.model.spelling_correction:
        return None
    path = directory / SPELLING
    if not path.is_file():
        raise CheckpointError(
            f"{directory}: {SPELLING} missing (its config sets model.spelling_correction)"
        )
    try:
        return SpellingCorrector.load(path, model.query_encoder.tokenizer.get_vocab(),
                                      **config_rules(cfg.model))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
