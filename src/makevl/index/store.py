"""The on-disk product index: files, manifest, checksums and atomic replacement.

An index directory holds

- the vector backend's files (FAISS: ``index.faiss``, ``vectors.npy``, ``ids.npy``;
  see :mod:`makevl.index.backends`), holding one vector per ``vector_id`` below;
  Milvus keeps the vectors in a collection the manifest names, and a Milvus Lite
  database sits beside the versions (``DIR.versions/milvus.db``)
- ``products.parquet``  one row per product: what a search result shows
- ``model/``            the index's own copy of the checkpoint that encoded it (none
                        for the hashing encoder), so the index is self-contained
- ``lexical.npz``, ``lexical_terms.json``  the BM25 channel (:mod:`makevl.index.lexical`)
- ``query_tower*.onnx``  optional compiled query towers (``makevl export``), listed with
                        their SHA-256 and parity under the manifest's ``runtimes``
- ``manifest.json``     model hash, encoder, config, dim, count, backend and its
                        options, times and the SHA-256 of every file above; written last

``DIR`` is a symlink to a version directory ``DIR.versions/<stamp>``. A build or
an update writes a new version next to the current one and swaps the symlink
with one ``rename``, so a crash at any point leaves the previous index intact
and readers never see half an index; the next build or update removes versions
a crash left unpublished.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from makevl.files import file_sha256, fsync, fsync_tree, swap_into_place
from makevl.index.backends import DEFAULT_BACKEND, VectorBackend, load_backend
from makevl.index.errors import IndexFileError, IndexStoreError, ModelMismatchError

FORMAT_VERSION = 2  # 2: vector backends, modality_weights
MANIFEST = "manifest.json"
PRODUCTS_FILE = "products.parquet"
MODEL_DIR = "model"
MODALITIES = ("title", "image", "fused")  # the order of the modality_weights column

PRODUCT_SCHEMA = pa.schema(
    [
        ("vector_id", pa.int64()),  # the product's id in the vector backend
        ("id", pa.string()),
        ("title", pa.string()),
        ("image_path", pa.string()),  # absolute path of a catalog image, or null
        ("image_bytes", pa.large_binary()),  # the image itself when the catalog held bytes
        ("image_embedded", pa.bool_()),  # image_bytes is set (so readers need not load it)
        ("attributes", pa.string()),  # JSON object
        # Modal Adaptation: how much the title, image and fused vectors counted
        ("modality_weights", pa.list_(pa.float32(), len(MODALITIES))),
    ]
)
# What a search needs in memory; image bytes are read from disk on request.
DISPLAY_COLUMNS = [name for name in PRODUCT_SCHEMA.names if name != "image_bytes"]


def versions_dir(index_dir: Path) -> Path:
    return index_dir.with_name(index_dir.name + ".versions")


@contextmanager
def writer_lock(index_dir: Path) -> Iterator[None]:
    """One writer at a time per index (an flock on ``DIR.versions/.lock``)."""
    folder = versions_dir(index_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise IndexStoreError(f"{index_dir}: another build or update is writing this index")
        remove_unpublished(index_dir)
        yield


def is_version(path: Path) -> bool:
    """A version folder :func:`new_version` made (not e.g. a Milvus Lite database beside them)."""
    return path.is_dir() and re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{8}", path.name) is not None


def remove_unpublished(index_dir: Path) -> None:
    """Remove the versions (and link files) that a crashed build or update left behind.

    Only called under the writer lock: then every version but the published one is stale.
    """
    current = index_dir.resolve() if index_dir.is_symlink() else None
    for path in versions_dir(index_dir).iterdir():
        if is_version(path) and path.resolve() != current:
            shutil.rmtree(path, ignore_errors=True)
    for link in index_dir.parent.glob(f".{index_dir.name}.link-*"):
        link.unlink(missing_ok=True)


def new_version(index_dir: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = versions_dir(index_dir) / f"{stamp}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def check_replaceable(index_dir: Path) -> None:
    """Refuse to replace a file or a folder of other things with an index."""
    if index_dir.is_symlink() or not index_dir.exists():
        return
    is_index = (index_dir / MANIFEST).is_file()
    if not index_dir.is_dir() or (not is_index and any(index_dir.iterdir())):
        raise IndexStoreError(
            f"{index_dir} exists and is not a makevl index; choose another output folder"
        )


def publish(index_dir: Path, version: Path) -> None:
    """Point ``index_dir`` at ``version`` in one atomic rename; drop the older versions."""
    fsync_tree(version)
    check_replaceable(index_dir)
    link = index_dir.with_name(f".{index_dir.name}.link-{uuid.uuid4().hex[:8]}")
    os.symlink(os.path.relpath(version, index_dir.parent), link)
    if index_dir.is_symlink() or not index_dir.exists():
        os.replace(link, index_dir)  # atomic: readers see the old or the new index
        fsync(index_dir.parent)
    else:  # a plain directory (an index copied with cp -L): move it aside, then swap
        swap_into_place(link, index_dir)
    for old in versions_dir(index_dir).iterdir():  # previous and interrupted versions
        if is_version(old) and old != version:
            shutil.rmtree(old, ignore_errors=True)


def write_version(
    index_dir: Path,
    version: Path,
    manifest: dict[str, Any],
    backend: VectorBackend,
    table: pa.Table | None = None,
    other_files: Sequence[str] = (),
) -> dict[str, Any]:
    """Write the index files into ``version`` (the table may already be there), checksum
    them and ``other_files`` already written there (e.g. the lexical channel's), write the
    manifest last and publish. Returns the manifest written."""
    if table is not None:
        pq.write_table(table, version / PRODUCTS_FILE, row_group_size=1024)
    carry_runtimes(index_dir, version, manifest)
    names = [*backend.save(version), PRODUCTS_FILE, *other_files]
    if (version / MODEL_DIR).is_dir():  # checksummed too: a swapped model is refused
        names += sorted(f"{MODEL_DIR}/{p.name}" for p in (version / MODEL_DIR).iterdir())
    manifest = {
        **manifest,
        "dim": backend.dim,
        "count": backend.count,
        "backend": backend.name,
        "backend_options": backend.options,
        "index_type": backend.index_type,
        "files": {
            name: {"sha256": file_sha256(version / name), "bytes": (version / name).stat().st_size}
            for name in names
        },
    }
    (version / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    publish(index_dir, version)
    return manifest


def carry_runtimes(index_dir: Path, version: Path, manifest: dict[str, Any]) -> None:
    """Hard-link the compiled query towers (``makevl export``) of the current version into
    ``version``: they depend on the model only, which an update keeps."""
    for entry in manifest.get("runtimes", {}).values():
        target = version / entry["file"]
        if not target.exists():
            os.link(index_dir.resolve() / entry["file"], target)


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    path = Path(index_dir) / MANIFEST
    if not path.is_file():
        raise IndexFileError(
            f"{path}: not found; {index_dir} is not an index built by `makevl index build`"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFileError(f"{path}: corrupt manifest ({exc}); rebuild the index") from exc
    missing = [
        k for k in ("format", "model_hash", "encoder", "dim", "count", "files") if k not in manifest
    ]
    if missing:
        raise IndexFileError(f"{path}: corrupt manifest, missing {missing}; rebuild the index")
    if manifest["format"] != FORMAT_VERSION:
        raise IndexStoreError(
            f"{path}: index format {manifest['format']}, this makevl reads {FORMAT_VERSION}; "
            "rebuild the index"
        )
    return manifest


def checked_file(path: Path, sha256: str, remedy: str) -> Path:
    """``path``, once it exists and has the SHA-256 the manifest recorded for it.

    ``remedy`` ends the error: what the user should run to get a good file.
    """
    if not path.is_file():
        raise IndexFileError(f"{path}: missing (listed in {MANIFEST}); {remedy}")
    actual = file_sha256(path)
    if actual != sha256:
        raise IndexFileError(
            f"{path}: checksum mismatch (expected sha256 {sha256[:16]}..., got "
            f"{actual[:16]}...); {remedy}"
        )
    return path


def verify_files(index_dir: str | Path, manifest: dict[str, Any]) -> None:
    """Check every file the manifest lists exists and matches its SHA-256."""
    for name, info in manifest["files"].items():
        checked_file(Path(index_dir) / name, info["sha256"], "the file is corrupt, rebuild the index")


def check_model(manifest: dict[str, Any], model_hash: str | None, index_dir: Path) -> None:
    """Refuse to mix vectors of two models in one index or one search."""
    if model_hash is None or model_hash == manifest["model_hash"]:
        return
    built_with = manifest["encoder"].get("path", manifest["encoder"].get("type"))
    raise ModelMismatchError(
        f"{index_dir} was built with model {manifest['model_hash'][:16]} ({built_with}), but the "
        f"queries would be encoded by model {model_hash[:16]}; its vectors are not comparable. "
        "Rebuild the index with this checkpoint (`makevl index build`) or use the checkpoint "
        "that built it."
    )


@dataclass
class StoredIndex:
    """A loaded index version. ``table`` holds :data:`DISPLAY_COLUMNS` (or all columns)."""

    path: Path  # the resolved version directory
    manifest: dict[str, Any]
    backend: VectorBackend
    table: pa.Table


def load_stored(
    index_dir: str | Path,
    *,
    mmap: bool = True,
    verify: bool = True,
    all_columns: bool = False,
    **search_options: Any,
) -> StoredIndex:
    """Load an index for reading; a missing or corrupt file raises :class:`IndexFileError`.

    ``search_options`` (``ef_search``, ``nprobe``) go to the vector backend.
    """
    index_dir = Path(index_dir)
    if not index_dir.exists():
        raise IndexFileError(f"{index_dir}: no such index directory")
    path = index_dir.resolve()  # pin this version even if an update swaps the link meanwhile
    manifest = read_manifest(path)
    if verify:
        verify_files(path, manifest)
    name = manifest.get("backend", DEFAULT_BACKEND)
    backend = load_backend(
        name, path, mmap=mmap, **manifest.get("backend_options", {}), **search_options
    )
    try:
        table = pq.read_table(
            path / PRODUCTS_FILE, columns=None if all_columns else DISPLAY_COLUMNS
        )
    except (OSError, pa.ArrowException) as exc:
        raise IndexFileError(
            f"{path / PRODUCTS_FILE}: not a readable product table: {exc}"
        ) from exc
    if backend.count != table.num_rows or backend.dim != manifest["dim"]:
        raise IndexFileError(
            f"{path}: the {name} index has {backend.count} vectors of dim {backend.dim}, "
            f"{PRODUCTS_FILE} has {table.num_rows} rows, manifest says dim {manifest['dim']}; "
            "rebuild the index"
        )
    return StoredIndex(path, manifest, backend, table)
