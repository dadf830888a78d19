"""The lexical channel: BM25 over product titles and keywords, and its fusion with the vectors.

A vector model ranks low the exact words it never learned (a model number, a
rare brand); BM25 finds them. The index keeps raw term counts, not BM25
weights, so adding or deleting products never needs the old texts; the
weights are computed from the counts when the index is loaded. Files (open
formats, read without pickle):

- ``lexical.npz``         ``ids`` (the vector id of each row), and the counts as a
                          sparse rows x terms matrix: ``indptr``, ``term_ids``, ``counts``
- ``lexical_terms.json``  the vocabulary: term id -> term

:class:`Fusion` merges the lexical and vector rankings by reciprocal rank (``mode=hybrid``);
the index and the ``hybrid`` system of ``makevl eval`` share it.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from makevl.data.catalog import Product
from makevl.data.text import bm25_tokens
from makevl.index.errors import IndexFileError

COUNTS_FILE = "lexical.npz"
TERMS_FILE = "lexical_terms.json"
LEXICAL_FILES = (COUNTS_FILE, TERMS_FILE)
RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)


def product_text(product: Product) -> str:
    """What BM25 sees of a product: its title and its catalog keywords."""
    return " ".join([product.title, *product.keywords])


class LexicalIndex:
    """BM25 (Lucene's idf, ``k1``, ``b``) over rows of term counts; row ``r`` is vector id ``ids[r]``.

    Rows keep the order they were added in, and equal scores rank in that order.
    """

    def __init__(
        self,
        ids: np.ndarray,
        indptr: np.ndarray,
        term_ids: np.ndarray,
        counts: np.ndarray,
        terms: list[str],
        k1: float = 1.5,
        b: float = 0.75,
    ) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.term_ids = np.asarray(term_ids, dtype=np.int32)
        self.counts = np.asarray(counts, dtype=np.int32)
        self.terms = terms
        self.term_index = {term: i for i, term in enumerate(terms)}
        self.k1, self.b = k1, b
        self._cached_postings: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def _postings(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(starts, rows, weights)``: the BM25 weight of every (row, term), grouped by term;
        term ``t``'s rows are ``rows[starts[t]:starts[t + 1]]``. Computed on first use."""
        if self._cached_postings is None:
            rows = np.repeat(np.arange(len(self.ids)), np.diff(self.indptr))
            lengths = np.bincount(rows, weights=self.counts, minlength=len(self.ids))
            average = lengths.mean() if len(lengths) and lengths.mean() > 0 else 1.0
            df = np.bincount(self.term_ids, minlength=len(self.terms))
            idf = np.log1p((len(self.ids) - df + 0.5) / (df + 0.5))
            tf = self.counts.astype(np.float64)
            norm = self.k1 * (1 - self.b + self.b * lengths[rows] / average)
            weights = idf[self.term_ids] * tf * (self.k1 + 1) / (tf + norm)
            order = np.argsort(self.term_ids, kind="stable")
            starts = np.concatenate([[0], np.cumsum(df)])
            self._cached_postings = starts, rows[order], weights[order].astype(np.float32)
        return self._cached_postings

    @classmethod
    def from_texts(cls, texts: Iterable[str], ids: np.ndarray) -> LexicalIndex:
        """Count the terms of ``texts``, the products with vector ids ``ids``."""
        terms: dict[str, int] = {}
        row_lengths, term_ids, counts = array("q"), array("i"), array("i")
        for text in texts:
            counted = Counter(bm25_tokens(text))
            term_ids.extend(terms.setdefault(term, len(terms)) for term in counted)
            counts.extend(counted.values())
            row_lengths.append(len(counted))
        ids = np.asarray(ids, np.int64)
        if len(ids) != len(row_lengths):
            raise ValueError(f"{len(row_lengths)} texts for {len(ids)} ids")
        indptr = np.concatenate([[0], np.cumsum(np.frombuffer(row_lengths, np.int64))])
        return cls(
            ids,
            indptr,
            np.frombuffer(term_ids, np.int32),
            np.frombuffer(counts, np.int32),
            list(terms),
        )

    @classmethod
    def from_products(cls, products: Iterable[Product], ids: np.ndarray) -> LexicalIndex:
        return cls.from_texts((product_text(p) for p in products), ids)

    @classmethod
    def concatenate(cls, parts: Sequence[LexicalIndex]) -> LexicalIndex:
        """The rows of ``parts`` one after the other, over one merged vocabulary."""
        terms: dict[str, int] = {}
        term_ids = []
        for part in parts:
            remap = np.array([terms.setdefault(t, len(terms)) for t in part.terms], np.int32)
            term_ids.append(remap[part.term_ids] if len(remap) else part.term_ids)
        lengths = [np.diff(part.indptr) for part in parts]
        return cls(
            np.concatenate([np.zeros(0, np.int64), *(part.ids for part in parts)]),
            np.concatenate([[0], np.cumsum(np.concatenate([np.zeros(0, np.int64), *lengths]))]),
            np.concatenate([np.zeros(0, np.int32), *term_ids]),
            np.concatenate([np.zeros(0, np.int32), *(part.counts for part in parts)]),
            list(terms),
        )

    def without(self, ids: np.ndarray) -> LexicalIndex:
        """This index less the rows of ``ids`` (ids it does not hold are ignored)."""
        keep = ~np.isin(self.ids, ids)
        lengths = np.diff(self.indptr)
        entries = np.repeat(keep, lengths)
        return LexicalIndex(
            self.ids[keep],
            np.concatenate([[0], np.cumsum(lengths[keep])]),
            self.term_ids[entries],
            self.counts[entries],
            self.terms,
            self.k1,
            self.b,
        )

    def search(
        self, queries: Sequence[str], k: int, allowed_ids: np.ndarray | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(ids, scores)`` per query: the top ``k`` rows sharing a term with it, best first.

        Products sharing no term with the query are not returned. With
        ``allowed_ids`` only those ids are.
        """
        starts, posting_rows, posting_weights = self._postings()
        results = []
        for query in queries:
            columns = sorted(
                {self.term_index[t] for t in bm25_tokens(query) if t in self.term_index}
            )
            spans = [slice(starts[c], starts[c + 1]) for c in columns]
            rows = np.concatenate([np.zeros(0, np.int64), *(posting_rows[s] for s in spans)])
            weights = np.concatenate(
                [np.zeros(0, np.float32), *(posting_weights[s] for s in spans)]
            )
            matched, where = np.unique(rows, return_inverse=True)
            scores = np.bincount(where, weights=weights, minlength=len(matched))
            if allowed_ids is not None:
                allowed = np.isin(self.ids[matched], allowed_ids)
                matched, scores = matched[allowed], scores[allowed]
            order = np.lexsort((matched, -scores))[:k]
            results.append((self.ids[matched[order]], scores[order].astype(np.float32)))
        return results

    def save(self, folder: Path) -> list[str]:
        """Write :data:`LEXICAL_FILES` into ``folder``; returns their names."""
        with (folder / COUNTS_FILE).open("wb") as handle:
            np.savez(
                handle, ids=self.ids, indptr=self.indptr, term_ids=self.term_ids, counts=self.counts
            )
        (folder / TERMS_FILE).write_text(json.dumps(self.terms, ensure_ascii=False), "utf-8")
        return list(LEXICAL_FILES)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex:
        try:
            with np.load(folder / COUNTS_FILE, allow_pickle=False) as arrays:
                parts = {name: arrays[name] for name in ("ids", "indptr", "term_ids", "counts")}
            terms = json.loads((folder / TERMS_FILE).read_text("utf-8"))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(
                f"{folder}: unreadable {COUNTS_FILE} or {TERMS_FILE} ({exc}); rebuild the index"
            ) from exc
        nnz, rows = len(parts["term_ids"]), len(parts["ids"])
        if (
            not isinstance(terms, list)
            or len(parts["indptr"]) != rows + 1
            or parts["indptr"][-1] != nnz
            or len(parts["counts"]) != nnz
            or (nnz and not 0 <= parts["term_ids"].min() <= parts["term_ids"].max() < len(terms))
        ):
            raise IndexFileError(
                f"{folder / COUNTS_FILE}: inconsistent with {TERMS_FILE} ({rows} rows, {nnz} "
                f"counts, {len(terms) if isinstance(terms, list) else '?'} terms); rebuild the index"
            )
        return cls(terms=terms, **parts)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hashable]], weights: Sequence[float], rrf_k: float = RRF_K
) -> list[tuple[Hashable, float]]:
    """Merge rankings: an item scores ``sum_c weights[c] / (rrf_k + rank_c)`` (ranks from 1).

    Returns ``(item, score)`` best first; equal scores keep the order items were first met.
    """
    if len(rankings) != len(weights):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    fused: dict[Hashable, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + weight / (rrf_k + rank)
    return sorted(fused.items(), key=lambda pair: -pair[1])


@dataclass(frozen=True)
class Fusion:
    """How hybrid search merges the vector and lexical channels: reciprocal rank fusion of
    each channel's top ``depth``. A channel of weight 0 is left out."""

    vector_weight: float = 1.0
    lexical_weight: float = 1.0
    rrf_k: float = RRF_K
    depth: int = 100

    def __post_init__(self) -> None:
        if min(self.vector_weight, self.lexical_weight) < 0 or not (
            self.vector_weight or self.lexical_weight
        ):
            raise ValueError("fusion weights must be >= 0 and not both 0")
        if self.rrf_k <= 0 or self.depth < 1:
            raise ValueError(f"rrf_k must be > 0 and depth >= 1, got {self.rrf_k}, {self.depth}")

    def fuse(
        self, vector_ranking: Sequence[Hashable], lexical_ranking: Sequence[Hashable]
    ) -> list[tuple[Hashable, float]]:
        """``(item, fused score)`` best first, over both channels' rankings (best first)."""
        channels = [
            (ranking, weight)
            for ranking, weight in (
                (vector_ranking, self.vector_weight),
                (lexical_ranking, self.lexical_weight),
            )
            if weight > 0
        ]
        return reciprocal_rank_fusion(*zip(*channels), rrf_k=self.rrf_k)


__all__ = [
    "LEXICAL_FILES",
    "RRF_K",
    "Fusion",
    "LexicalIndex",
    "product_text",
    "reciprocal_rank_fusion",
]
