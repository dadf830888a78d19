"""The MAKE model, its backbones, its training objective, inference and checkpoints.

Names are imported lazily, so ``import makevl.models.losses`` (e.g. in a
distributed worker) does not pay for importing transformers and timm.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BackboneError": "backbones",
    "ImageTower": "backbones",
    "TextTower": "backbones",
    "create_image_tower": "backbones",
    "create_text_tower": "backbones",
    "register_image_tower": "backbones",
    "register_text_tower": "backbones",
    "CheckpointError": "checkpoint",
    "checkpoint_hash": "checkpoint",
    "copy_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "resolve_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "MakeEncoder": "inference",
    "ProductVectors": "inference",
    "ProductMemoryBank": "losses",
    "contrastive_loss": "losses",
    "gather_with_grad": "losses",
    "keyword_prediction_loss": "losses",
    "BRANCHES": "make",
    "MakeModel": "make",
    "MakeObjective": "objective",
    "register_loss_term": "objective",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'makevl.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"makevl.models.{_EXPORTS[name]}"), name)
