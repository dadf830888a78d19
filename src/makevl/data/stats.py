"""Summary statistics of a shop: what a person checks before training on it."""

from __future__ import annotations

from collections import Counter
from statistics import mean, median
from typing import Any

from makevl.data.shop import SPLITS, Shop


def shop_statistics(shop: Shop) -> dict[str, Any]:
    """Counts per split, title and query lengths, relevant products per query, categories.

    Categories are counted by the shop preset's category attribute, as eval and report group them.
    """
    title_words = [len(p.title.split()) for p in shop.products] or [0]
    texts = {q.query for q in shop.queries}
    query_words = [len(t.split()) for t in texts] or [0]
    stats: dict[str, Any] = {
        "shop": shop.name,
        "products": len(shop.products),
        "query_rows": len(shop.queries),
        "distinct_queries": len(texts),
        "skipped_rows": len(shop.errors),
        "title_words": {"mean": round(mean(title_words), 1), "max": max(title_words)},
        "query_words": {"mean": round(mean(query_words), 2), "max": max(query_words)},
    }
    splits = {}
    for split in SPLITS:
        query_set = shop.query_set(split)
        relevant = [len(r) for r in query_set.qrels.values()] or [0]
        splits[split] = {
            "products": len(query_set.pool),
            "queries": len(query_set.queries),
            "relevant_per_query_median": median(relevant),
        }
    stats["splits"] = splits
    if shop.category_attribute:
        counts = Counter(p.attributes.get(shop.category_attribute, "?") for p in shop.products)
        stats["categories"] = dict(counts.most_common(15))
    return stats


def format_statistics(stats: dict[str, Any]) -> str:
    lines = [
        (
            f"shop {stats['shop']}: {stats['products']} products, {stats['distinct_queries']} "
            f"distinct queries, {stats['query_rows']} relevance rows, "
            f"{stats['skipped_rows']} rows skipped"
        ),
        (
            f"title words: mean {stats['title_words']['mean']} max {stats['title_words']['max']}; "
            f"query words: mean {stats['query_words']['mean']} max {stats['query_words']['max']}"
        ),
    ]
    for split, s in stats["splits"].items():
        lines.append(
            f"  {split:5s}: {s['products']:6d} products {s['queries']:6d} queries "
            f"(median {s['relevant_per_query_median']} relevant each)"
        )
    if "categories" in stats:
        lines.append("categories: " + ", ".join(f"{k} {v}" for k, v in stats["categories"].items()))
    return "\n".join(lines)
