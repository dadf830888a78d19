"""Which image files the server may send, and as what media type.

The index stores each product's image as the absolute path it had at build
time. An index written by an old or hostile pipeline can hold any path
(``/etc/passwd``, ``shop/../../etc/hostname``), so the server checks each path
again before it opens it: resolved (``..`` and symlinks followed), the file must
lie under one of the image roots (the catalog folders the index manifest
records) and must start like an image. Anything else is refused.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

_MAGIC = [
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
]
MEDIA_TYPES = sorted({media_type for _, media_type in _MAGIC} | {"image/webp", "image/avif"})
HEAD_BYTES = 16


def image_type(head: bytes) -> str | None:
    """The media type of image data from its first :data:`HEAD_BYTES`, or None if not an image."""
    for magic, media_type in _MAGIC:
        if head.startswith(magic):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "image/avif"
    return None


class ImageRefused(LookupError):
    """The stored image path may not be served; the message says why (for the server log)."""


def image_roots(folders: str | Path | Iterable[str | Path]) -> list[Path]:
    """Resolved absolute roots; a relative one (never written by ``index build``) is dropped."""
    if isinstance(folders, (str, Path)):
        folders = [folders]
    return [Path(folder).resolve() for folder in folders if Path(folder).is_absolute()]


def servable_image(path: str | Path, roots: list[Path]) -> tuple[Path, str]:
    """``(resolved file, media type)`` if ``path`` may be served, else :class:`ImageRefused`."""
    if not roots:
        raise ImageRefused(
            "the index records no image root (built before image roots were recorded); "
            "rebuild it or serve with --image-root"
        )
    try:
        resolved = Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError) as exc:  # missing, symlink loop, NUL byte
        raise FileNotFoundError(f"{path}: {exc}") from None
    if not any(resolved.is_relative_to(root) for root in roots):
        raise ImageRefused(f"{path} resolves to {resolved}, outside the image roots")
    if not resolved.is_file():
        raise FileNotFoundError(f"{resolved} is not a file")
    with resolved.open("rb") as handle:
        media_type = image_type(handle.read(HEAD_BYTES))
    if media_type is None:
        raise ImageRefused(f"{resolved} is not an image file")
    return resolved, media_type
