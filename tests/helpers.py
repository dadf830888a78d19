"""Small test helpers importable from any test module (tests/ is on pythonpath)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_image(path: Path, colour=(200, 30, 30), mode: str = "RGB", size=(32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, colour)
    if mode != "RGB":
        img = img.convert(mode)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    img.save(path, format=fmt)
    return path


# Smallest MAKE that trains in seconds: shared by the training and index tests.
TINY_MODEL_OVERRIDES = [
    "data.image_size=32",
    "data.max_query_tokens=8",
    "data.max_title_tokens=16",
    "model.text_backbone=tiny",
    "model.image_backbone=tiny",
    "model.embed_dim=32",
    "model.fusion_layers=1",
    "model.fusion_heads=2",
]
