"""The smallest vector backend: exact search over numpy arrays, saved as .npy files.

Registered only by tests, to show that the store, build and search work with
any backend: this module plus its line in ``BACKENDS`` is all a backend needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class MemoryBackend:
    name = "memory"

    def __init__(self, dim: int, **_ignored: Any) -> None:
        self._dim = dim
        self.ids = np.zeros(0, dtype=np.int64)
        self.vectors = np.zeros((0, dim), dtype=np.float32)

    dim = property(lambda self: self._dim)
    count = property(lambda self: len(self.ids))
    index_type = property(lambda self: "exact")
    options = property(lambda self: {})

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, products: Any = None) -> None:
        if np.shape(vectors) != (len(ids), self._dim):
            raise ValueError(f"upsert needs vectors of shape ({len(ids)}, {self._dim})")
        self.delete(ids)
        self.ids = np.concatenate([self.ids, np.asarray(ids, dtype=np.int64)])
        self.vectors = np.concatenate([self.vectors, np.asarray(vectors, dtype=np.float32)])

    def delete(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self.ids, ids)
        self.ids, self.vectors = self.ids[keep], self.vectors[keep]

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), max(k, self.count)), -np.inf, dtype=np.float32)
        scores[:, : self.count] = queries @ self.vectors.T
        ids = np.full(scores.shape, -1, dtype=np.int64)
        ids[:, : self.count] = self.ids
        if allowed_ids is not None:
            scores[~np.isin(ids, allowed_ids)] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
        ids[np.isneginf(scores)] = -1
        return scores, ids

    def save(self, folder: Path) -> list[str]:
        np.save(folder / "memory_ids.npy", self.ids)
        np.save(folder / "memory_vectors.npy", self.vectors)
        return ["memory_ids.npy", "memory_vectors.npy"]

    @classmethod
    def load(cls, folder: Path, **_ignored: Any) -> MemoryBackend:
        vectors = np.load(folder / "memory_vectors.npy")
        backend = cls(vectors.shape[1])
        backend.ids, backend.vectors = np.load(folder / "memory_ids.npy"), vectors
        return backend
