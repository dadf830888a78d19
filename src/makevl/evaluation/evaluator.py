"""One harness for every system: MAKE, its ablations and the baselines.

A *system* is anything with a ``name`` and ``rank(queries, pool, k)`` returning
ranked product ids, so BM25, a zero-shot bi-encoder and a trained MAKE checkpoint
are scored by the same code on the same queries, with the same confidence
intervals. :class:`EmbeddingSystem` turns any two-tower encoder into a system.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from makevl.data.catalog import Product
from makevl.data.shop import QuerySet
from makevl.evaluation.metrics import (
    bootstrap_ci,
    exact_search,
    metric_names,
    query_category,
    query_metrics,
    ranking_depth,
)

log = logging.getLogger(__name__)

# Metrics shown in tables (JSON output carries all of them).
HEADLINE = ("recall@1", "recall@10", "recall@100", "hit@10", "ndcg@10", "mrr@10", "map@100")


class RankingSystem(Protocol):
    name: str

    def rank(self, queries: list[str], pool: list[Product], k: int) -> list[list[str]]:
        """Ranked product ids (best first, at most ``k``) for each query."""
        ...


class EmbeddingSystem:
    """A two-tower encoder as a system: exact inner-product search over the pool.

    ``encode_queries(texts) -> [Q, d]``; ``encode_products(products)`` returns
    ``[N, d]`` or a tuple ``(vectors, modality_weights, ids)`` as
    ``MakeEncoder.encode_products`` does (the weights are kept for reports). Pass
    unit-norm vectors for cosine similarity.
    """

    def __init__(
        self,
        name: str,
        encode_queries: Callable[[list[str]], np.ndarray],
        encode_products: Callable[[list[Product]], Any],
    ) -> None:
        self.name = name
        self.encode_queries = encode_queries
        self.encode_products = encode_products
        self.modality_weights: np.ndarray | None = None

    def rank(self, queries: list[str], pool: list[Product], k: int) -> list[list[str]]:
        encoded = self.encode_products(pool)
        if isinstance(encoded, tuple):
            vectors = encoded[0]
            self.modality_weights = np.asarray(encoded[1]) if len(encoded) > 1 else None
            if len(encoded) > 2 and list(encoded[2]) != [p.id for p in pool]:
                raise ValueError(f"{self.name}: encode_products returned ids out of pool order")
        else:
            vectors = encoded
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(vectors) != len(pool):
            raise ValueError(
                f"{self.name}: {len(vectors)} product vectors for {len(pool)} products"
            )
        query_vecs = np.asarray(self.encode_queries(queries), dtype=np.float32)
        if len(query_vecs) != len(queries):
            raise ValueError(
                f"{self.name}: {len(query_vecs)} query vectors for {len(queries)} queries"
            )
        _, indices = exact_search(query_vecs, vectors, k)
        ids = [p.id for p in pool]
        return [[ids[i] for i in row] for row in indices]


@dataclass
class EvalResult:
    """Scores of one system on one query set."""

    system: str
    metrics: dict[str, float]  # mean over scored queries
    ci: dict[str, tuple[float, float]]  # 95% bootstrap interval of each mean
    n_queries: int  # queries scored
    skipped_queries: list[str]  # query ids with no relevant product in the pool
    judgements_outside_pool: int  # qrels naming products the pool does not hold
    pool_size: int
    seconds: float  # wall time of the system's rank() call (encoding + search)
    category_attribute: str | None = None
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)  # "queries": count
    per_query: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # split, preset, ... for the record

    def to_dict(self, per_query: bool = False) -> dict[str, Any]:
        out = asdict(self)
        out["ci"] = {name: list(bounds) for name, bounds in self.ci.items()}
        if not per_query:
            out.pop("per_query")
        return out

    def to_json(self, per_query: bool = False, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(per_query), indent=indent, allow_nan=True)

    def save_per_query(self, path: str | Path) -> None:
        """One JSON line per scored query: metrics, category and the top-10 ids."""
        with Path(path).open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in self.per_query)

    def to_table(self) -> str:
        from rich.table import Table

        summary = (
            f"{self.system}: {self.n_queries} queries, {self.pool_size} products, "
            f"{self.seconds:.1f}s"
        )
        if self.skipped_queries:
            summary += f", {len(self.skipped_queries)} queries without relevant products skipped"
        table = Table()
        table.add_column("metric")
        table.add_column("mean", justify="right")
        table.add_column("95% CI", justify="right")
        for name, value in self.metrics.items():
            low, high = self.ci[name]
            table.add_row(name, f"{value:.4f}", f"[{low:.4f}, {high:.4f}]")
        parts: list[Any] = [summary, table]
        if self.per_category:
            shown = [m for m in HEADLINE if m in self.metrics]
            by_category = Table(title=f"by {self.category_attribute}", title_justify="left")
            by_category.add_column(self.category_attribute or "category")
            by_category.add_column("queries", justify="right")
            for name in shown:
                by_category.add_column(name, justify="right")
            for category, row in self.per_category.items():
                by_category.add_row(
                    category, str(int(row["queries"])), *(f"{row[m]:.3f}" for m in shown)
                )
            parts.append(by_category)
        return _render(*parts)


def comparison_table(results: Sequence[EvalResult], metrics: Sequence[str] = HEADLINE) -> str:
    """Systems side by side: mean and 95% CI of each headline metric, plus time."""
    from rich.table import Table

    shown = [m for m in metrics if results and m in results[0].metrics]
    table = Table()
    table.add_column("system")
    for name in shown:
        table.add_column(name, justify="right")
    table.add_column("seconds", justify="right")
    for result in results:
        cells = [
            f"{result.metrics[m]:.3f} [{result.ci[m][0]:.3f}, {result.ci[m][1]:.3f}]" for m in shown
        ]
        table.add_row(result.system, *cells, f"{result.seconds:.1f}")
    return _render(table)


def _render(*renderables: Any) -> str:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=200, color_system=None, markup=False, highlight=False)
    for item in renderables:
        console.print(item)
    return buffer.getvalue()


class RetrievalEvaluator:
    """Scores systems on a :class:`QuerySet`; queries with no relevant product are skipped."""

    def __init__(
        self,
        query_set: QuerySet,
        ks: Sequence[int] = (1, 5, 10, 50, 100),
        category_attribute: str | None = None,
        bootstrap: int = 1000,
        seed: int = 0,
    ) -> None:
        if not ks or min(ks) < 1:
            raise ValueError(f"ks must be positive cutoffs, got {ks}")
        self.ks = tuple(sorted(set(ks)))
        self.depth = ranking_depth(self.ks)
        self.bootstrap = bootstrap
        self.seed = seed
        self.category_attribute = category_attribute
        self.pool = query_set.pool
        self.products_by_id: dict[str, Product] = {}
        for product in self.pool:
            if product.id in self.products_by_id:
                raise ValueError(f"{product.where}: product id {product.id!r} twice in the pool")
            self.products_by_id[product.id] = product

        self.query_ids = list(query_set.queries)
        self.query_texts = [query_set.queries[qid] for qid in self.query_ids]
        self.text_of = dict(query_set.queries)
        self.qrels: dict[str, dict[str, float]] = {}
        self.judgements_outside_pool = 0
        for qid in self.query_ids:
            judged = query_set.qrels.get(qid, {})
            in_pool = {pid: rel for pid, rel in judged.items() if pid in self.products_by_id}
            self.judgements_outside_pool += len(judged) - len(in_pool)
            self.qrels[qid] = {pid: rel for pid, rel in in_pool.items() if rel > 0}
        if self.judgements_outside_pool:
            log.warning(
                "%d judgements name products outside the pool; ignored",
                self.judgements_outside_pool,
            )
        self.scored_ids = [qid for qid in self.query_ids if self.qrels[qid]]
        self.skipped_ids = [qid for qid in self.query_ids if not self.qrels[qid]]

        self.category_of: dict[str, str] = {}
        if category_attribute is not None:
            if not any(category_attribute in p.attributes for p in self.pool):
                available = sorted({name for p in self.pool for name in p.attributes})
                raise ValueError(
                    f"category attribute {category_attribute!r} is on no product in the pool; "
                    f"available: {available}"
                )

            def attribute_of(pid: str) -> str | None:
                return self.products_by_id[pid].attributes.get(category_attribute)

            self.category_of = {
                qid: query_category(self.qrels[qid], attribute_of) for qid in self.scored_ids
            }

    def evaluate(self, system: RankingSystem) -> EvalResult:
        """Run ``system.rank`` on the scored queries and the whole pool, then score it."""
        texts = [self.text_of[qid] for qid in self.scored_ids]
        start = time.perf_counter()
        rankings = system.rank(texts, self.pool, self.depth)
        seconds = time.perf_counter() - start
        if len(rankings) != len(texts):
            raise ValueError(f"{system.name}: {len(rankings)} rankings for {len(texts)} queries")
        return self.score(dict(zip(self.scored_ids, rankings)), system.name, seconds)

    def score(
        self, rankings: dict[str, Sequence[str]], name: str, seconds: float = 0.0
    ) -> EvalResult:
        """Metrics, CIs, per-query rows and the per-category table of given rankings."""
        names = metric_names(self.ks)
        values = np.zeros((len(self.scored_ids), len(names)))
        per_query = []
        for row, qid in enumerate(self.scored_ids):
            ranking = list(rankings.get(qid, []))
            scores = query_metrics(ranking, self.qrels[qid], self.ks)
            values[row] = [scores[m] for m in names]
            per_query.append(
                {
                    "qid": qid,
                    "query": self.text_of[qid],
                    "n_relevant": len(self.qrels[qid]),
                    "category": self.category_of.get(qid),
                    "metrics": scores,
                    "top10": ranking[:10],
                }
            )
        means = values.mean(axis=0) if len(values) else np.full(len(names), np.nan)
        low, high = bootstrap_ci(values, self.bootstrap, self.seed)
        return EvalResult(
            system=name,
            metrics={m: float(v) for m, v in zip(names, means)},
            ci={m: (float(lo), float(hi)) for m, lo, hi in zip(names, low, high)},
            n_queries=len(self.scored_ids),
            skipped_queries=list(self.skipped_ids),
            judgements_outside_pool=self.judgements_outside_pool,
            pool_size=len(self.pool),
            seconds=seconds,
            category_attribute=self.category_attribute,
            per_category=self._per_category(values, names),
            per_query=per_query,
        )

    def _per_category(self, values: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
        if not self.category_of:
            return {}
        rows_of: dict[str, list[int]] = defaultdict(list)
        for row, qid in enumerate(self.scored_ids):
            rows_of[self.category_of[qid]].append(row)
        table = {}
        for category in sorted(rows_of, key=lambda c: (-len(rows_of[c]), c)):
            rows = rows_of[category]
            table[category] = {"queries": len(rows)}
            table[category].update(zip(names, values[rows].mean(axis=0).tolist()))
        return table
