"""Durable file operations shared by checkpoints and indexes.

Both write a folder next to the one they replace, flush it to disk, then swap it
in with renames, so a crash or a full disk mid-write never leaves a half-written
checkpoint or index where a reader looks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (weights can be GBs)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync(path: str | Path) -> None:
    """Flush one file or folder entry to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | Path) -> None:
    """Flush every file directly inside ``folder``, then the folder itself."""
    folder = Path(folder)
    for path in folder.iterdir():
        if path.is_file():
            fsync(path)
    fsync(folder)


def swap_into_place(new: Path, target: Path) -> None:
    """Replace folder ``target`` by folder ``new`` (a sibling) with two renames.

    A crash between the renames leaves ``.<target>.old`` beside it, which readers
    may fall back to; it is removed once the swap is complete.
    """
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    fsync(target.parent)
    shutil.rmtree(old, ignore_errors=True)
