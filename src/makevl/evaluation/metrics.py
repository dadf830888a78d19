"""Ranking and IR metrics: exact top-K search, per-query metrics, bootstrap CIs.

Definitions (all per query, then averaged over queries):

- ``recall@K`` = |relevant in top K| / |relevant|. With many relevant products per
  query (fashion-mini queries often have dozens) recall@10 cannot reach 1, so
  ``hit@K`` (1 if any relevant product is in the top K, the "success@K" of
  QA retrieval) is reported next to it.
- ``ndcg@10``: graded gain = the relevance label (linear, as trec_eval / BEIR),
  discount 1/log2(rank + 1), divided by the DCG of the ideal ranking of the
  query's judged products.
- ``mrr@10``: 1 / rank of the first relevant product in the top 10, else 0.
- ``map@100``: average precision over the top 100, normalised by
  min(|relevant|, 100) so a perfect top 100 scores 1.

Edge cases:

- Ties: :func:`top_k` orders by (-score, position in the pool), so equal scores
  keep catalog order and results are reproducible run to run.
- A product is relevant when its label is > 0. A query with no relevant product
  has no defined recall or NDCG; it is left out of every mean and counted by the
  evaluator (scoring it 0 would punish every system for a data gap).
- K larger than the ranking: the ranking is simply shorter; recall@K divides by
  |relevant| all the same.
- A product id repeated in a ranking earns gain only at its first rank; later
  copies keep their slot but count as non-relevant (the user sees a wasted slot).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

NDCG_DEPTH = 10
MRR_DEPTH = 10
MAP_DEPTH = 100


def metric_names(ks: Sequence[int]) -> list[str]:
    """Names of the metrics :func:`query_metrics` returns, in display order."""
    names = [f"recall@{k}" for k in ks] + [f"hit@{k}" for k in ks]
    return names + [f"ndcg@{NDCG_DEPTH}", f"mrr@{MRR_DEPTH}", f"map@{MAP_DEPTH}"]


def ranking_depth(ks: Sequence[int]) -> int:
    """How many results per query the metrics look at."""
    return max([*ks, NDCG_DEPTH, MRR_DEPTH, MAP_DEPTH])


# ---------------------------------------------------------------------------
# Exact top-K


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores per row, ordered by (-score, index).

    ``scores`` is [B, N]; returns int64 [B, min(k, N)]. Uses ``np.argpartition``
    (O(N) per row), then repairs rows where ties straddle the K-th score so the
    lowest indices win, exactly as a full stable sort would.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D [queries, products], got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank")
    n_rows, n = scores.shape
    k = min(k, n)
    if k <= 0:
        return np.zeros((n_rows, 0), dtype=np.int64)
    if k == n:
        candidates = np.broadcast_to(np.arange(n), scores.shape)
    else:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, candidates, axis=1).min(axis=1)
        at_least_kth = (scores >= kth[:, None]).sum(axis=1)
        if (at_least_kth > k).any():  # ties at the boundary: pick them by index
            candidates = candidates.copy()
            for row in np.flatnonzero(at_least_kth > k):
                above = np.flatnonzero(scores[row] > kth[row])
                tied = np.flatnonzero(scores[row] == kth[row])[: k - len(above)]
                candidates[row] = np.concatenate([above, tied])
    return _sort_candidates(scores, candidates)


def _sort_candidates(scores: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    values = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=-1)
    return np.take_along_axis(candidates, order, axis=1).astype(np.int64)


def exact_search(
    query_vecs: np.ndarray,
    product_vecs: np.ndarray,
    k: int,
    query_block: int = 256,
    product_block: int = 65536,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact maximum-inner-product top-K, blockwise so 1M products fit in memory.

    Returns ``(scores [Q, k'], indices [Q, k'])`` with k' = min(k, N), ordered as
    :func:`top_k`. Memory peaks at query_block x product_block scores.
    """
    query_vecs = np.asarray(query_vecs, dtype=np.float32)
    product_vecs = np.asarray(product_vecs, dtype=np.float32)
    if query_vecs.ndim != 2 or product_vecs.ndim != 2:
        raise ValueError("query and product vectors must be 2-D arrays")
    if query_vecs.shape[1] != product_vecs.shape[1]:
        raise ValueError(
            f"dimension mismatch: queries are {query_vecs.shape[1]}-d, "
            f"products {product_vecs.shape[1]}-d"
        )
    n_queries, n_products = len(query_vecs), len(product_vecs)
    k = min(k, n_products)
    all_scores = np.zeros((n_queries, k), dtype=np.float32)
    all_indices = np.zeros((n_queries, k), dtype=np.int64)
    for q0 in range(0, n_queries, query_block):
        q = query_vecs[q0 : q0 + query_block]
        best_scores = np.zeros((len(q), 0), dtype=np.float32)
        best_indices = np.zeros((len(q), 0), dtype=np.int64)
        for p0 in range(0, n_products, product_block):
            block = q @ product_vecs[p0 : p0 + product_block].T
            local = top_k(block, k)
            # Merge with the running best; global indices keep the tie-break exact.
            merged_scores = np.concatenate(
                [best_scores, np.take_along_axis(block, local, axis=1)], axis=1
            )
            merged_indices = np.concatenate([best_indices, local + p0], axis=1)
            order = np.lexsort((merged_indices, -merged_scores), axis=-1)[:, :k]
            best_scores = np.take_along_axis(merged_scores, order, axis=1)
            best_indices = np.take_along_axis(merged_indices, order, axis=1)
        all_scores[q0 : q0 + len(q)] = best_scores
        all_indices[q0 : q0 + len(q)] = best_indices
    return all_scores, all_indices


# ---------------------------------------------------------------------------
# Per-query metrics


def query_metrics(
    ranking: Sequence[str], qrels: Mapping[str, float], ks: Sequence[int] = (1, 5, 10, 50, 100)
) -> dict[str, float]:
    """Metrics of one ranked list of product ids against ``{product id: relevance}``.

    Raises ``ValueError`` if the query has no relevant product (label > 0): such
    a query has no defined score and must be left out by the caller.
    """
    relevant = {pid: float(rel) for pid, rel in qrels.items() if rel > 0}
    if not relevant:
        raise ValueError("query has no relevant product; exclude it from the mean")
    depth = ranking_depth(ks)
    gains = np.zeros(depth, dtype=np.float64)
    seen: set[str] = set()
    for rank, pid in enumerate(ranking[:depth]):
        if pid not in seen:
            seen.add(pid)
            gains[rank] = relevant.get(pid, 0.0)
    hits = gains > 0
    n_relevant = len(relevant)

    out: dict[str, float] = {}
    cumulative_hits = np.cumsum(hits)
    for k in ks:
        found = int(cumulative_hits[min(k, depth) - 1])
        out[f"recall@{k}"] = found / n_relevant
    for k in ks:
        out[f"hit@{k}"] = float(cumulative_hits[min(k, depth) - 1] > 0)

    discounts = 1.0 / np.log2(np.arange(2, NDCG_DEPTH + 2))
    dcg = float((gains[:NDCG_DEPTH] * discounts).sum())
    ideal = np.sort(np.fromiter(relevant.values(), dtype=np.float64))[::-1][:NDCG_DEPTH]
    idcg = float((ideal * discounts[: len(ideal)]).sum())
    out[f"ndcg@{NDCG_DEPTH}"] = dcg / idcg

    first = np.flatnonzero(hits[:MRR_DEPTH])
    out[f"mrr@{MRR_DEPTH}"] = 1.0 / float(first[0] + 1) if len(first) else 0.0

    ranks = np.flatnonzero(hits[:MAP_DEPTH]) + 1
    precisions = cumulative_hits[ranks - 1] / ranks
    out[f"map@{MAP_DEPTH}"] = float(precisions.sum()) / min(n_relevant, MAP_DEPTH)
    return out


# ---------------------------------------------------------------------------
# Aggregation


def mean_metrics(
    query_vecs: np.ndarray,
    product_vecs: np.ndarray,
    product_ids: Sequence[str],
    qrels: Sequence[Mapping[str, float]],
    k: int,
) -> dict[str, float]:
    """Mean :func:`query_metrics` at cut-off ``k`` (and NDCG@10) over queries ranked by
    :func:`exact_search`; ``qrels`` row-aligned with ``query_vecs``. For quick checks
    such as validation during training; the evaluator adds intervals and categories."""
    _, top = exact_search(query_vecs, product_vecs, k)
    rows = [
        query_metrics([product_ids[j] for j in top[row]], relevant, ks=(k,))
        for row, relevant in enumerate(qrels)
    ]
    return {name: float(np.mean([r[name] for r in rows])) for name in rows[0]}


def bootstrap_ci(
    values: np.ndarray, n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of the mean over queries.

    ``values`` is [Q, M] (queries x metrics); returns ``(low [M], high [M])``.
    Every metric uses the same resampled query sets (paired), drawn as multinomial
    counts so memory is n_resamples x Q, not n_resamples x Q x M.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    n_queries = len(values)
    if n_queries == 0:
        nan = np.full(values.shape[1], np.nan)
        return nan, nan.copy()
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_queries, np.full(n_queries, 1.0 / n_queries), size=n_resamples)
    means = counts @ values / n_queries  # [n_resamples, M]
    alpha = (1.0 - level) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return low, high


def majority_label(labels: Sequence[str]) -> str:
    """Most common label; ties go to the alphabetically first, so the result is stable."""
    if not labels:
        return ""
    counts = Counter(labels)
    best = max(counts.values())
    return min(label for label, count in counts.items() if count == best)


def query_category(
    qrels: Mapping[str, float], attribute_of: Callable[[str], str | None], missing: str = "(none)"
) -> str:
    """Category of a query: the majority ``attribute_of(pid)`` over its relevant products."""
    labels = [attribute_of(pid) or missing for pid, rel in qrels.items() if rel > 0]
    return majority_label(labels) or missing
