"""Query an index: text in, products with scores and Modal Adaptation weights out.

Beside the MAKE vectors a search can restrict results to products whose stored
attributes match (``filters``: values of one attribute OR-ed, attributes
AND-ed; still exactly the top ``k`` of the matching products), fuse in the
BM25 channel (``mode="hybrid"``, see :mod:`makevl.index.lexical`), and say which
catalog keywords Keyword Enhancement attached to a query (:meth:`Searcher.query_keywords`).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from makevl.index.encoders import Encoder, encoder_from_manifest, load_checkpoint_encoder
from makevl.index.lexical import LEXICAL_FILES, Fusion, LexicalIndex
from makevl.index.runtime import load_query_encoder
from makevl.index.store import (
    MODALITIES,
    PRODUCTS_FILE,
    IndexFileError,
    IndexStoreError,
    ModelMismatchError,
    check_model,
    load_stored,
)

MODES = ("vector", "hybrid")  # MAKE vectors only; MAKE and BM25 fused by reciprocal rank
Filters = Mapping[str, str | Sequence[str]]  # attribute -> the values it may have


class UnknownFilterError(ValueError):
    """A filter names an attribute no product in the index has."""


class NoLexicalChannelError(IndexStoreError):
    """``mode="hybrid"`` on an index built without the BM25 channel."""


def parse_filters(items: Iterable[str]) -> dict[str, list[str]]:
    """``["gender:Women", "articleType:Heels"]`` -> ``{"gender": ["Women"], ...}``.

    The attribute ends at the first ``:``; both are compared exactly as stored.
    """
    filters: dict[str, list[str]] = {}
    for item in items:
        name, colon, value = item.partition(":")
        if not colon or not name:
            raise ValueError(f"filter {item!r} is not ATTRIBUTE:VALUE")
        filters.setdefault(name, []).append(value)
    return filters


def _attribute_postings(
    attributes: list[str | None], vector_ids: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """attribute -> value -> the sorted vector ids of the products with it."""
    lists: dict[str, dict[str, list[int]]] = {}
    for vector_id, text in zip(vector_ids.tolist(), attributes):
        for name, value in json.loads(text or "{}").items():
            if value not in (None, ""):
                lists.setdefault(name, {}).setdefault(str(value), []).append(vector_id)
    return {
        name: {value: np.sort(np.asarray(ids, np.int64)) for value, ids in values.items()}
        for name, values in lists.items()
    }


@dataclass
class Hit:
    """One search result (or one stored product, with ``score`` 0)."""

    id: str
    score: float  # inner product (mode "vector") or fused reciprocal-rank score ("hybrid")
    title: str
    image: str | None  # absolute catalog path, "embedded" when the index holds the bytes, or None
    modality_weights: dict[str, float]  # Modal Adaptation: weight of the title, image, fused
    attributes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Loads an index (memory-mapped where its backend can) and the model that built it.

    ``encoder`` overrides the one the manifest names; its ``model_hash``
    attribute (or ``model_hash=``) must match the index. ``checkpoint`` searches
    with another checkpoint, which must hold the same weights.
    ``ef_search`` / ``nprobe`` trade speed for recall on HNSW / IVF indexes
    (passed to the vector backend). ``runtime`` picks the query runtime
    (``"torch"``, ``"onnx-fp32"``, ``"onnx-int8"``); by default the fastest one
    ``makevl export`` recorded in the manifest, else torch (see
    :mod:`makevl.index.runtime`; ``batched``: the fastest in batches, as a
    server encodes). ``query_threads`` is an ONNX runtime's
    intra-op thread count (1 suits a server that batches under load; a single
    query on an idle machine finishes sooner on every core). ``encoder`` stays
    the torch encoder; ``query_encoder`` is the one queries run through.
    """

    def __init__(
        self,
        index_dir: str | Path,
        encoder: Encoder | None = None,
        *,
        checkpoint: str | Path | None = None,
        model_hash: str | None = None,
        mmap: bool = True,
        verify: bool = True,
        ef_search: int = 128,
        nprobe: int = 64,
        runtime: str | None = None,
        query_threads: int = 1,
        batched: bool = False,
    ) -> None:
        self.index_dir = Path(index_dir)
        stored = load_stored(
            self.index_dir, mmap=mmap, verify=verify, ef_search=ef_search, nprobe=nprobe
        )
        self.path, self.manifest = stored.path, stored.manifest
        if encoder is None and checkpoint is not None:
            encoder, _spec, model_hash, _cfg = load_checkpoint_encoder(checkpoint)
        elif encoder is None:
            encoder, model_hash = encoder_from_manifest(self.manifest, self.path)
        else:
            model_hash = model_hash or getattr(encoder, "model_hash", None)
        check_model(self.manifest, model_hash, self.index_dir)
        self.encoder = encoder
        self.model_hash = self.manifest["model_hash"]
        self.query_encoder, self.runtime = load_query_encoder(
            self.path, self.manifest, encoder, runtime, query_threads, batched
        )

        self.backend = stored.backend
        table = stored.table
        self.ids: list[str] = table.column("id").to_pylist()
        self.row_of_id = {pid: row for row, pid in enumerate(self.ids)}
        vector_ids = table.column("vector_id").to_numpy()
        self.row_of_vector = np.full(int(vector_ids.max(initial=-1)) + 1, -1, dtype=np.int64)
        self.row_of_vector[vector_ids] = np.arange(len(vector_ids))
        self.titles = table.column("title").combine_chunks()
        self.image_paths = table.column("image_path").combine_chunks()
        self.embedded = table.column("image_embedded").to_numpy(zero_copy_only=False)
        self.attributes = table.column("attributes").combine_chunks()
        self.postings = _attribute_postings(self.attributes.to_pylist(), vector_ids)
        self.lexical: LexicalIndex | None = None
        if LEXICAL_FILES[0] in self.manifest["files"]:  # indexes built before it have none
            self.lexical = LexicalIndex.load(self.path)
            if len(self.lexical) != len(self.ids):
                raise IndexFileError(
                    f"{self.path}: the lexical channel has {len(self.lexical)} products, the "
                    f"index {len(self.ids)}; rebuild the index"
                )
        weights = table.column("modality_weights").combine_chunks().flatten()
        self.modality_weights = weights.to_numpy().reshape(-1, len(MODALITIES))
        # A result is read from Python lists: an Arrow scalar per field per hit
        # cost more than the whole search (0.7 ms for 10 hits).
        self._title_of = self.titles.to_pylist()
        self._image_of = [
            path if path is not None else ("embedded" if embedded else None)
            for path, embedded in zip(self.image_paths.to_pylist(), self.embedded.tolist())
        ]
        self._attributes_of = self.attributes.to_pylist()
        self._weights_of = self.modality_weights.tolist()
        # Embedded image bytes stay on disk; read one row group on request.
        self._parquet = pq.ParquetFile(self.path / PRODUCTS_FILE)
        self._parquet_lock = threading.Lock()
        self._row_group_starts = np.cumsum(
            [0]
            + [
                self._parquet.metadata.row_group(i).num_rows
                for i in range(self._parquet.num_row_groups)
            ]
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def _hit(self, row: int, score: float) -> Hit:
        attributes = self._attributes_of[row]
        return Hit(
            id=self.ids[row],
            score=score,
            title=self._title_of[row],
            image=self._image_of[row],
            modality_weights=dict(zip(MODALITIES, self._weights_of[row])),
            attributes=json.loads(attributes) if attributes else {},
        )

    def search(
        self,
        queries: list[str],
        k: int = 10,
        *,
        filters: Filters | None = None,
        mode: str = "vector",
        fusion: Fusion | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` products for each query, best first.

        ``filters`` keeps products whose attributes match (see :meth:`allowed_ids`);
        ``mode="hybrid"`` fuses the MAKE and BM25 rankings as ``fusion`` says.
        """
        ranked = self.rank(queries, k, filters=filters, mode=mode, fusion=fusion)
        return self.hits(ranked)

    def hits(self, ranked: list[list[tuple[int, float]]]) -> list[list[Hit]]:
        """The products of :meth:`rank`'s ``(row, score)`` lists."""
        return [[self._hit(row, score) for row, score in found] for found in ranked]

    def rank(
        self,
        queries: list[str],
        k: int = 10,
        *,
        filters: Filters | None = None,
        mode: str = "vector",
        fusion: Fusion | None = None,
    ) -> list[list[tuple[int, float]]]:
        """:meth:`search` as ``(row, score)`` pairs: all a search worker in another process
        has to send back (:mod:`makevl.serving.worker_process`)."""
        if mode not in MODES:
            raise ValueError(f"unknown search mode {mode!r}; expected one of {MODES}")
        if mode == "hybrid" and self.lexical is None:
            raise NoLexicalChannelError(
                f"{self.index_dir} has no lexical channel (built before it existed); rebuild it "
                "with `makevl index build` to search with mode=hybrid"
            )
        allowed = self.allowed_ids(filters)
        if not queries:
            return []
        if len(self) == 0 or (allowed is not None and len(allowed) == 0):
            return [[] for _ in queries]
        vectors = np.ascontiguousarray(
            self.query_encoder.encode_queries(list(queries)), dtype=np.float32
        )
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ModelMismatchError(
                f"{self.index_dir}: index vectors have dim {self.dim}, the query encoder gives "
                f"shape {vectors.shape}"
            )
        if mode == "hybrid":
            return self._hybrid(queries, vectors, k, allowed, fusion or Fusion())
        scores, vector_ids = self.backend.search(vectors, min(k, len(self)), allowed)
        rows = self.row_of_vector[np.maximum(vector_ids, 0)].tolist()
        return [
            [
                (row, score)
                for row, score, vid in zip(row_list, score_row.tolist(), id_row.tolist())
                if vid >= 0  # ANN indexes may return fewer than k
            ]
            for row_list, score_row, id_row in zip(rows, scores, vector_ids)
        ]

    def _hybrid(
        self,
        queries: list[str],
        vectors: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        fusion: Fusion,
    ) -> list[list[tuple[int, float]]]:
        depth = min(max(k, fusion.depth), len(self))
        _, vector_ids = self.backend.search(vectors, depth, allowed)
        lexical = self.lexical.search(self.searched_as(queries), depth, allowed)
        results = []
        for vector_row, (lexical_ids, _) in zip(vector_ids, lexical):
            fused = fusion.fuse(vector_row[vector_row >= 0].tolist(), lexical_ids.tolist())[:k]
            results.append([(int(self.row_of_vector[v]), s) for v, s in fused])
        return results

    def allowed_ids(self, filters: Filters | None) -> np.ndarray | None:
        """Vector ids of the products matching ``filters`` (None: no filter, all match).

        A product matches when, for every attribute named, its value is one of those
        given (exact, case-sensitive). An attribute with no values given is no constraint.
        """
        allowed = None
        for name, values in (filters or {}).items():
            if name not in self.postings:
                raise UnknownFilterError(
                    f"unknown filter attribute {name!r}; the products of this index have "
                    f"{', '.join(map(repr, self.postings)) or 'no attributes'}"
                )
            values = [values] if isinstance(values, str) else list(values)
            if not values:
                continue
            postings, none = self.postings[name], np.zeros(0, np.int64)
            matching = np.unique(np.concatenate([none, *(postings.get(v, none) for v in values)]))
            if allowed is not None:
                matching = np.intersect1d(allowed, matching, assume_unique=True)
            allowed = matching
        return allowed

    def facets(self, top: int = 20) -> dict[str, list[tuple[str, int]]]:
        """Per attribute, its ``top`` most common values with their product counts."""
        return {
            name: sorted(((v, len(ids)) for v, ids in values.items()), key=lambda p: (-p[1], p[0]))[
                :top
            ]
            for name, values in self.postings.items()
        }

    def query_keywords(self, queries: list[str], top: int = 5) -> list[list[tuple[str, float]]]:
        """The catalog keywords Keyword Enhancement attached to each query, with their attention
        weights, strongest first; empty for a model without KE (or a stand-in encoder)."""
        explain = getattr(self.encoder, "query_keywords", None)
        if explain is None:
            return [[] for _ in queries]
        return explain(list(queries), top)

    def searched_as(self, queries: list[str]) -> list[str]:
        """Each query as the index searches it: spelling-corrected where the model corrects
        (:mod:`makevl.spelling`), else as typed."""
        spelling = getattr(getattr(self.encoder, "model", None), "spelling", None)
        return spelling.correct_all(queries) if spelling is not None else list(queries)

    def product(self, product_id: str) -> Hit | None:
        row = self.row_of_id.get(product_id)
        return None if row is None else self._hit(row, 0.0)

    def _image_bytes(self, row: int) -> bytes | None:
        group = int(np.searchsorted(self._row_group_starts, row, side="right") - 1)
        with self._parquet_lock:
            column = self._parquet.read_row_group(group, columns=["image_bytes"]).column(0)
        return column[row - int(self._row_group_starts[group])].as_py()

    def image(self, product_id: str) -> str | bytes | None:
        """The stored image of an indexed product: its catalog path, its bytes, or None.

        Only ever looked up by product id, so no caller-supplied path is opened.
        """
        row = self.row_of_id.get(product_id)
        if row is None:
            return None
        path = self.image_paths[row].as_py()
        if path is not None:
            return path
        return self._image_bytes(row) if self.embedded[row] else None


__all__ = [
    "MODES",
    "Fusion",
    "Hit",
    "IndexFileError",
    "ModelMismatchError",
    "NoLexicalChannelError",
    "Searcher",
    "UnknownFilterError",
    "parse_filters",
]
