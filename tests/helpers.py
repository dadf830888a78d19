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
