"""Opening product images safely.

Every image goes through :func:`load_image`, which fully decodes it (so a
truncated JPEG fails here, not deep inside a training step) and converts odd
modes (grayscale, RGBA, CMYK, palette, 16-bit) to RGB. Failures raise
:class:`ImageError` with a reason a person can act on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageFile

# Never accept truncated data silently: a half-written JPEG is an error.
ImageFile.LOAD_TRUNCATED_IMAGES = False

CONVERTED_MODES = {"L", "LA", "P", "PA", "RGBA", "CMYK", "I", "I;16", "F", "1", "YCbCr", "LAB", "HSV"}


class ImageError(ValueError):
    """An image that cannot be used; ``reason`` is a short machine-friendly tag."""

    def __init__(self, ref: str, reason: str, detail: str = "") -> None:
        self.ref = ref
        self.reason = reason
        super().__init__(f"{ref}: {reason}{': ' + detail if detail else ''}")


def resolve_image_path(ref: str, roots: list[str]) -> str:
    """The file a catalog's image path names, or :class:`ImageError` if it lies outside ``roots``.

    A relative path is taken from ``roots[0]`` (the catalog's folder). ``..`` and
    symlinks are resolved before the check, so neither ``/etc/passwd``,
    ``../../etc/hostname`` nor a link to them gets through. ``roots`` must be
    resolved folders (``os.path.realpath``).
    """
    try:
        path = os.path.realpath(os.path.join(roots[0], ref))
    except (OSError, ValueError) as exc:  # e.g. a NUL byte in the path
        raise ImageError(ref, "not a usable path", str(exc)) from exc
    if not any(path.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
        raise ImageError(
            ref,
            "image outside the allowed folders",
            f"it resolves to {path}, not inside {' or '.join(roots)} "
            "(allow another folder with --image-root or data.image_root)",
        )
    return path


def describe(ref: str | bytes | None) -> str:
    if isinstance(ref, (bytes, bytearray)):
        return f"<{len(ref)} image bytes>"
    return str(ref)


def open_image(ref: str | bytes | None) -> tuple[Image.Image, str]:
    """Decode an image fully and return ``(rgb_image, original_mode)``."""
    name = describe(ref)
    if ref is None or ref == "":
        raise ImageError(name, "no image")
    if isinstance(ref, (bytes, bytearray)):
        if len(ref) == 0:
            raise ImageError(name, "empty file")
        source: io.BytesIO | Path = io.BytesIO(ref)
    else:
        path = Path(ref)
        if not path.is_file():
            raise ImageError(name, "missing file")
        if path.stat().st_size == 0:
            raise ImageError(name, "empty file")
        source = path
    try:
        with Image.open(source) as img:
            img.load()
            mode = img.mode
            if mode == "RGB":
                rgb = img.copy()
            elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
                # Composite transparency on white, the usual product-photo background.
                rgba = img.convert("RGBA")
                rgb = Image.new("RGB", rgba.size, (255, 255, 255))
                rgb.paste(rgba, mask=rgba.getchannel("A"))
            elif mode in ("I", "I;16", "F"):
                rgb = img.point(lambda v: v / 256).convert("L").convert("RGB")
            else:
                rgb = img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageError(name, "image too large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        message = str(exc)
        reason = "truncated image" if "truncated" in message.lower() else "not a readable image"
        raise ImageError(name, reason, message) from exc
    if rgb.width == 0 or rgb.height == 0:
        raise ImageError(name, "empty image")
    return rgb, mode


def load_image(ref: str | bytes | None) -> Image.Image:
    """Decode an image fully and return it as RGB; raise :class:`ImageError` if unusable."""
    return open_image(ref)[0]
