"""The FAISS vector backend: exact inner product below a size, an ANN index above.

Below ``exact_threshold`` vectors the index is ``Flat`` (exact), else the FAISS
``factory`` string (HNSW32 by default; IVF variants are trained on a sample).
The exact vectors are kept beside the index (``vectors.npy``, ``ids.npy``), so
an update never re-encodes and any index type can be rebuilt. Updates remove
and add ids in place where FAISS can (Flat, IVF); HNSW cannot remove ids, and
crossing the threshold changes the type, so those rebuild from the exact vectors.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from makevl.index.errors import IndexFileError, IndexStoreError

# faiss logs which CPU build it loaded at INFO on import; not news for a user.
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

DEFAULT_FACTORY = "HNSW32"
DEFAULT_EXACT_THRESHOLD = 50_000
FILTER_WALK_FRACTION = 20  # a filter keeping under 1/20 of an ANN index is searched exactly
TRAIN_SAMPLE = 100_000  # vectors used to train IVF / PQ quantizers
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"  # the exact vectors, row i has id ids.npy[i]
IDS_FILE = "ids.npy"


def _new_base(factory: str, dim: int) -> faiss.Index:
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(
            f"FAISS factory string {factory!r} does not work for dim {dim}: "
            f"{str(exc).strip().splitlines()[-1]}"
        ) from exc


def _make_index(vectors: np.ndarray, ids: np.ndarray, index_type: str, dim: int) -> faiss.Index:
    """An ``index_type`` index (inner product) holding ``ids``, trained and filled.

    Flat and HNSW are wrapped in ``IndexIDMap2``; IVF indexes store ids in their
    inverted lists themselves (an IDMap over IVF breaks on ``remove_ids``).
    """
    base = _new_base(index_type, dim)
    index = base if faiss.try_extract_index_ivf(base) is not None else faiss.IndexIDMap2(base)
    if not index.is_trained and len(vectors):
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(len(vectors), min(len(vectors), TRAIN_SAMPLE), replace=False))
        try:
            index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        except RuntimeError as exc:
            raise IndexStoreError(
                f"cannot train {index_type!r} on {len(rows)} vectors "
                f"({str(exc).strip().splitlines()[-1]}); use fewer IVF lists or a higher "
                "exact threshold"
            ) from exc
    if len(vectors):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return index


def _read_index(path: Path, mmap: bool) -> faiss.Index:
    """Read a FAISS index, memory-mapping its vectors/codes where FAISS supports it."""
    if mmap:
        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            pass  # index types FAISS cannot map are read into memory
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexFileError(f"{path}: not a readable FAISS index: {exc}") from exc


def set_threads(count: int) -> None:
    """Threads FAISS uses for one search or build call (OpenMP)."""
    faiss.omp_set_num_threads(count)


class FaissBackend:
    """A FAISS index over int64 ids, plus the exact vectors it is rebuilt from.

    ``ef_search`` / ``nprobe`` trade speed for recall on HNSW / IVF indexes.
    """

    name = "faiss"

    def __init__(
        self,
        dim: int,
        factory: str = DEFAULT_FACTORY,
        exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
        *,
        folder: Path | None = None,  # unused: FAISS writes its files only on save()
        ef_search: int = 128,
        nprobe: int = 64,
    ) -> None:
        _new_base(factory, dim)  # a bad factory string fails now, not after encoding
        self._dim, self.factory, self.exact_threshold = dim, factory, exact_threshold
        self.ef_search, self.nprobe = ef_search, nprobe
        self.ids = np.zeros(0, dtype=np.int64)
        self.vectors = np.zeros((0, dim), dtype=np.float32)
        self._sorted_ids: tuple[np.ndarray, np.ndarray] | None = None  # see _rows_of
        self._rebuild()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def index_type(self) -> str:
        return self._index_type

    @property
    def options(self) -> dict[str, Any]:
        return {"factory": self.factory, "exact_threshold": self.exact_threshold}

    def _type_for(self, count: int) -> str:
        return "Flat" if count < self.exact_threshold else self.factory

    def _rebuild(self) -> None:
        self._index_type = self._type_for(len(self.ids))
        self.index = _make_index(self.vectors, self.ids, self._index_type, self._dim)
        self.set_search_params(self.ef_search, self.nprobe)

    def set_search_params(self, ef_search: int, nprobe: int) -> None:
        self.ef_search, self.nprobe = ef_search, nprobe
        if "HNSW" in self._index_type:
            faiss.ParameterSpace().set_index_parameter(self.index, "efSearch", ef_search)
        if "IVF" in self._index_type:
            faiss.ParameterSpace().set_index_parameter(self.index, "nprobe", nprobe)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, products: Any = None) -> None:
        """``products`` is ignored: FAISS holds only vectors."""
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self._dim):
            raise ValueError(
                f"upsert needs vectors of shape ({len(ids)}, {self._dim}), got {vectors.shape}"
            )
        replaced = self.ids[np.isin(self.ids, ids)]
        self._change(replaced, ids, vectors)

    def delete(self, ids: np.ndarray) -> None:
        held = self.ids[np.isin(self.ids, np.asarray(ids, dtype=np.int64))]
        self._change(held, np.zeros(0, np.int64), np.zeros((0, self._dim), np.float32))

    def _change(self, remove: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(self.ids):
            keep = ~np.isin(self.ids, remove)
            self.ids = np.concatenate([self.ids[keep], ids])
            self.vectors = np.concatenate([self.vectors[keep], vectors])
        else:  # no copy of a whole catalog's vectors
            self.ids, self.vectors = ids, vectors
        in_place = (
            self.index.ntotal > 0
            and self._type_for(len(self.ids)) == self._index_type
            and self._change_in_place(remove, ids, vectors)
        )
        if not in_place or self.index.ntotal != len(self.ids):
            self._rebuild()

    def _change_in_place(self, remove: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """FAISS remove_ids + add_with_ids; False if the index type cannot remove (HNSW)."""
        if len(remove):
            try:
                self.index.remove_ids(np.ascontiguousarray(remove, dtype=np.int64))
            except RuntimeError:
                return False
        if len(ids):
            self.index.add_with_ids(vectors, ids)
        return True

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product. With ``allowed_ids`` only those are searched.

        A Flat index filters exactly. An ANN index's walk through mostly forbidden
        neighbours misses allowed ones, so a small allowed set (under ``exact_threshold``
        ids or under 1/:data:`FILTER_WALK_FRACTION` of the index) is searched by brute force
        over the stored vectors, exactly; a larger one by the filtered ANN walk, as exactly as
        an unfiltered search, and by brute force where that walk comes back short."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.count == 0:
            n = len(queries)
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        if allowed_ids is None:
            return self.index.search(queries, k)
        allowed_ids = np.ascontiguousarray(allowed_ids, dtype=np.int64)
        small = max(self.exact_threshold, self.count / FILTER_WALK_FRACTION)
        if self._index_type != "Flat" and len(allowed_ids) < small:
            return self._exact_search(queries, k, allowed_ids)
        selector = faiss.IDSelectorBatch(allowed_ids)
        if "IVF" in self._index_type:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self.nprobe)
        elif "HNSW" in self._index_type:
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.ef_search, k))
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self.index.search(queries, k, params=params)
        short = (ids >= 0).sum(axis=1) < min(k, len(allowed_ids))
        if short.any():  # the ANN walk found too few allowed neighbours
            scores[short], ids[short] = self._exact_search(queries[short], k, allowed_ids)
        return scores, ids

    def _exact_search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the stored vectors of ``allowed_ids`` (ids not held are ignored)."""
        rows = self._rows_of(allowed_ids)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if len(rows):
            all_scores = queries @ np.asarray(self.vectors[rows]).T
            top = min(k, len(rows))
            best = np.argsort(-all_scores, axis=1, kind="stable")[:, :top]
            scores[:, :top] = np.take_along_axis(all_scores, best, axis=1)
            ids[:, :top] = np.asarray(self.ids)[rows[best]]
        return scores, ids

    def _rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``self.vectors`` holding ``ids``, in row order (a sorted view, cached)."""
        if self._sorted_ids is None or self._sorted_ids[0] is not self.ids:
            self._sorted_ids = (self.ids, np.argsort(self.ids, kind="stable"))
        held, order = self._sorted_ids
        if not len(held):
            return np.zeros(0, np.int64)
        where = np.minimum(np.searchsorted(held, ids, sorter=order), len(held) - 1)
        found = held[order[where]] == ids
        return np.sort(order[where[found]])

    def save(self, folder: Path) -> list[str]:
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        np.save(folder / VECTORS_FILE, np.ascontiguousarray(self.vectors, dtype=np.float32))
        np.save(folder / IDS_FILE, self.ids)
        return [INDEX_FILE, VECTORS_FILE, IDS_FILE]

    @classmethod
    def load(cls, folder: Path, *, mmap: bool = True, **options: Any) -> FaissBackend:
        """Load saved files; the index is memory-mapped where FAISS can, the vectors always."""
        index = _read_index(folder / INDEX_FILE, mmap)
        backend = cls(index.d, **options)
        try:
            backend.vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
            backend.ids = np.load(folder / IDS_FILE, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise IndexFileError(
                f"{folder}: unreadable {VECTORS_FILE} or {IDS_FILE}: {exc}"
            ) from exc
        if backend.vectors.shape != (index.ntotal, index.d) or len(backend.ids) != index.ntotal:
            raise IndexFileError(
                f"{folder}: {INDEX_FILE} has {index.ntotal} vectors of dim {index.d}, "
                f"{VECTORS_FILE} has shape {backend.vectors.shape}, {IDS_FILE} {len(backend.ids)} "
                "ids; rebuild the index"
            )
        backend.index = index
        backend._index_type = backend._type_for(index.ntotal)
        backend.set_search_params(backend.ef_search, backend.nprobe)
        return backend
