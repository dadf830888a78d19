"""Vector backends: where product vectors live and how the nearest ones are found.

The index store (:mod:`makevl.index.store`) keeps products, versions and
checksums; a backend only maps int64 ids to vectors. Anything with the
methods of :class:`VectorBackend` is a backend; :data:`BACKENDS` names the
module and class of each, imported only when used. Adding one means a module
here and a line in :data:`BACKENDS`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

DEFAULT_BACKEND = "faiss"
BACKENDS = {
    "faiss": "makevl.index.backends.faiss:FaissBackend",
    "milvus": "makevl.index.backends.milvus:MilvusBackend",
}


class VectorBackend(Protocol):
    """int64 ids to unit vectors, searched by inner product."""

    name: str

    @property
    def dim(self) -> int: ...

    @property
    def count(self) -> int:
        """Vectors held."""
        ...

    @property
    def index_type(self) -> str:
        """What kind of index this is now (for reports and the manifest), e.g. "Flat"."""
        ...

    @property
    def options(self) -> dict[str, Any]:
        """The creation options, recorded in the manifest and passed back on load."""
        ...

    def upsert(
        self, ids: np.ndarray, vectors: np.ndarray, products: pa.Table | None = None
    ) -> None:
        """Add ``vectors [N, dim]`` under ``ids``; an id already held is replaced.

        ``products`` (rows of the index's product table, row i for ``ids[i]``) is
        for backends that store product fields beside the vectors (Milvus); others
        ignore it.
        """
        ...

    def delete(self, ids: np.ndarray) -> None:
        """Remove these ids; ids not held are ignored."""
        ...

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)``, both ``[len(queries), k]``, best first; id -1 pads a short row.

        With ``allowed_ids`` only those ids can be returned, and a row should be the top ``k``
        of them as exactly as an unfiltered search is (search filters promise it; see
        ``FaissBackend.search`` for how an ANN index keeps it).
        """
        ...

    def save(self, folder: Path) -> list[str]:
        """Write the backend's files into ``folder``; returns their names."""
        ...


def _backend_class(name: str) -> Any:
    if name not in BACKENDS:
        raise ValueError(f"unknown vector backend {name!r}; expected one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def create_backend(
    name: str, dim: int, folder: Path | None = None, **options: Any
) -> VectorBackend:
    """A new, empty backend of kind ``name`` for ``dim``-dim vectors.

    ``folder`` is the index version it will be saved into: a backend whose data
    lives outside it (Milvus Lite) places its files relative to it.
    """
    return _backend_class(name)(dim, folder=folder, **options)


def load_backend(name: str, folder: Path, **options: Any) -> VectorBackend:
    """Load the backend files a :meth:`VectorBackend.save` wrote into ``folder``.

    ``options`` are the saved :attr:`~VectorBackend.options` plus load-time
    settings (``mmap``, ``ef_search``, ``nprobe``) a backend may ignore.
    """
    return _backend_class(name).load(folder, **options)
