"""Training checkpoints: a model checkpoint plus the state needed to resume.

``last/`` holds, beside the model files of :mod:`makevl.models.checkpoint`, the
trainer state: optimizer, scheduler, position in the data, RNG states and the
memory bank (its buffers are not in the weights file, they are non-persistent).
It is stored in two open formats and never as a pickle, so a planted file cannot
run code on ``--resume``:

- ``trainer_state.safetensors``  every tensor (optimizer moments, RNG states, bank)
- ``trainer_state.json``         everything else, with each tensor replaced by
                                 ``{"__tensor__": key}``; tuples, int-keyed dicts
                                 and numpy arrays are tagged so they come back as
                                 they were saved (``optimizer.load_state_dict``
                                 matches its state by int keys)

``best/`` is a plain model checkpoint, for eval/index/serve.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from makevl.config import RunConfig
from makevl.models.checkpoint import CheckpointError, resolve_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from makevl.keywords import KeywordVocab
    from makevl.models.make import MakeModel

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
LEGACY_PICKLE = "trainer_state.pt"  # written by older makevl; never loaded
NUMPY_DTYPES = ("uint32", "int64", "float64")  # arrays found in RNG states


def encode_state(value: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """``value`` as JSON-ready data; its tensors are moved into ``tensors`` by key path."""
    if isinstance(value, torch.Tensor):
        key = path or "root"
        if key in tensors:
            raise ValueError(f"trainer state: two tensors under the key {key!r}")
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        if value.dtype.name not in NUMPY_DTYPES:
            raise TypeError(f"trainer state {path}: numpy dtype {value.dtype} is not stored")
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.name}
    if isinstance(value, tuple):
        return {"__tuple__": [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_state(v, tensors, f"{path}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        items = [(k, encode_state(v, tensors, f"{path}.{k}")) for k, v in value.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return dict(items)
        return {"__items__": [[k, v] for k, v in items]}  # int keys stay ints
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"trainer state {path}: cannot store a {type(value).__name__}")


def decode_state(value: Any, tensors: dict[str, torch.Tensor], where: Path) -> Any:
    """Inverse of :func:`encode_state`; builds only plain data, tensors and numpy arrays."""
    if isinstance(value, list):
        return [decode_state(v, tensors, where) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        key = value["__tensor__"]
        if key not in tensors:
            raise CheckpointError(f"{where}: tensor {key!r} missing from {STATE_TENSORS}")
        return tensors[key]
    if "__ndarray__" in value:
        if value.get("dtype") not in NUMPY_DTYPES:
            raise CheckpointError(f"{where}: unsupported array dtype {value.get('dtype')!r}")
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    if "__tuple__" in value:
        return tuple(decode_state(v, tensors, where) for v in value["__tuple__"])
    if "__items__" in value:
        return {k: decode_state(v, tensors, where) for k, v in value["__items__"]}
    return {k: decode_state(v, tensors, where) for k, v in value.items()}


def write_trainer_state(folder: Path, trainer_state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    encoded = encode_state(trainer_state, tensors)
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(encoded), encoding="utf-8")


def save_training_checkpoint(
    directory: str | Path,
    model: MakeModel,
    cfg: RunConfig,
    vocab: KeywordVocab,
    trainer_state: dict[str, Any],
) -> Path:
    """A model checkpoint with the trainer state beside it, written atomically."""
    return save_checkpoint(
        directory, model, cfg, vocab, lambda folder: write_trainer_state(folder, trainer_state)
    )


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """The trainer state of a checkpoint (or run) directory; a pickle there is never read."""
    directory = resolve_checkpoint(path)
    json_path, tensor_path = directory / STATE_JSON, directory / STATE_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        legacy = (
            f" ({LEGACY_PICKLE} is there, a pickle from an older makevl: it is never loaded, "
            "as unpickling a file can run any code)"
            if (directory / LEGACY_PICKLE).exists()
            else ""
        )
        raise CheckpointError(
            f"{directory}: {STATE_JSON} and {STATE_TENSORS} missing{legacy}; "
            "cannot resume from this checkpoint"
        )
    try:
        encoded = json.loads(json_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_path))
    except (OSError, ValueError, RuntimeError) as exc:  # JSON or safetensors header errors
        raise CheckpointError(f"{directory}: unreadable trainer state: {exc}") from exc
    state = decode_state(encoded, tensors, json_path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{json_path}: expected a JSON object")
    return state
