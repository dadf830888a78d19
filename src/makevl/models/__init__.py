"""The MAKE model, its backbones and its losses.

Names are imported lazily, so ``import makevl.models.losses`` (e.g. in a
distributed worker) does not pay for importing transformers and timm.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BackboneError": "backbones",
    "ImageEncoder": "backbones",
    "TextEncoder": "backbones",
    "create_image_encoder": "backbones",
    "create_text_encoder": "backbones",
    "ProductMemoryBank": "losses",
    "contrastive_loss": "losses",
    "gather_with_grad": "losses",
    "keyword_prediction_loss": "losses",
    "MakeModel": "make",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'makevl.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"makevl.models.{_EXPORTS[name]}"), name)
