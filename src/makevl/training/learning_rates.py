"""The learning rate of every parameter: new layers, pretrained tower bodies, layer-wise decay.

Fine-tuning a pretrained text tower on a few thousand templated queries can
make it forget what it knew (synonyms, spellings). Two knobs keep it closer to
where it started, both off by default:

- ``train.query_backbone_lr``: the query tower's own LR (else ``backbone_lr``);
- ``train.layer_lr_decay`` < 1: in a Hugging Face text tower, layer ``i`` of
  ``L`` learns at ``decay ** (L - i)`` times its tower's LR and the embeddings
  at ``decay ** (L + 1)`` (layer-wise LR decay, as in ELECTRA / BEiT fine-tuning):
  the general lower layers move least.
"""

from __future__ import annotations

import re

from makevl.config import TrainConfig

TOWERS = ("query_encoder", "title_encoder", "image_encoder")  # pretrained bodies
TEXT_TOWERS = ("query_encoder", "title_encoder")
_LAYER = re.compile(r"\.layer\.(\d+)\.")  # Hugging Face encoders: encoder.layer.<i>.


def parameter_lrs(names: list[str], train: TrainConfig) -> dict[str, float]:
    """``name -> LR`` for the model's parameter names (``model.named_parameters()``)."""
    backbone_lr = train.backbone_lr or train.lr
    tower_lr = {"query_encoder": train.query_backbone_lr or backbone_lr,
                "title_encoder": backbone_lr, "image_encoder": backbone_lr}
    depth = {tower: 1 + max((int(m.group(1)) for n in names if n.startswith(tower + ".")
                             for m in [_LAYER.search(n)] if m), default=-1)
             for tower in TEXT_TOWERS}
    lrs = {}
    for name in names:
        tower = name.split(".", 1)[0]
        if tower not in TOWERS:
            lrs[name] = train.lr
            continue
        lr = tower_lr[tower]
        if tower in TEXT_TOWERS and train.layer_lr_decay < 1.0:
            layer = _LAYER.search(name)
            if layer:
                lr *= train.layer_lr_decay ** (depth[tower] - int(layer.group(1)))
            elif ".embeddings." in name:
                lr *= train.layer_lr_decay ** (depth[tower] + 1)
        lrs[name] = lr
    return lrs
