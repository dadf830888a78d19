"""A shop: a catalog, a query log with relevance labels, and a product-level split.

Every command (train, eval, report, index) starts from :func:`load_shop`, so the
demo shop, the fashion-mini preset and a user's own files are handled alike.

Splits are by product and deterministic: a product's split is a hash of its id
and the split seed, so it never changes when rows are added or reordered and no
product is in two splits. Test queries are judged against test products only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

from makevl.config import DataConfig
from makevl.data.catalog import Product, QueryRecord, RowError

# Re-exported: callers read whole files and find the shared data through the shop module.
from makevl.data.presets import (  # noqa: F401
    fashion_mini_dir,
    get_preset,
    read_catalog,
    read_queries,
    shared_dir,
)

SPLITS = ("train", "val", "test")


def split_of(product_id: str, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> str:
    """Deterministic product-level split from a hash of ``seed:id``."""
    digest = hashlib.sha1(f"{seed}:{product_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


@dataclass
class QuerySet:
    """Evaluation queries in the usual IR layout (as in BEIR / sentence-transformers)."""

    queries: dict[str, str]  # query id -> text
    qrels: dict[str, dict[str, float]]  # query id -> {product id: relevance > 0}
    pool: list[Product]  # the products searched


@dataclass
class Shop:
    name: str
    products: list[Product]
    queries: list[QueryRecord]
    errors: list[RowError] = field(default_factory=list)  # rows skipped while loading
    split_seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    category_attribute: str | None = None  # from the preset: groups per-category tables

    def split_name(self, product_id: str) -> str:
        return split_of(product_id, self.split_seed, self.val_fraction, self.test_fraction)

    def products_in(self, split: str) -> list[Product]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return [p for p in self.products if self.split_name(p.id) == split]

    def queries_in(self, split: str) -> list[QueryRecord]:
        """Query-log rows whose product is in ``split`` (positive labels only)."""
        ids = {p.id for p in self.products_in(split)}
        return [q for q in self.queries if q.product_id in ids and q.label > 0]

    def query_set(self, split: str) -> QuerySet:
        pool = self.products_in(split)
        ids = {p.id for p in pool}
        qrels: dict[str, dict[str, float]] = defaultdict(dict)
        for record in self.queries:
            if record.product_id in ids and record.label > 0:
                qrels[record.query][record.product_id] = max(
                    record.label, qrels[record.query].get(record.product_id, 0.0)
                )
        texts = sorted(qrels)
        queries = {f"q{i}": text for i, text in enumerate(texts)}
        return QuerySet(queries, {f"q{i}": dict(qrels[t]) for i, t in enumerate(texts)}, pool)


def load_shop(cfg: DataConfig) -> Shop:
    """Load the shop a run config names, through its preset (``demo``, ``fashion-mini``, ``custom``)."""
    preset = get_preset(cfg.preset)
    if cfg.unseen_phrasing and preset.unseen_phrasing is None:
        raise ValueError(f"data.unseen_phrasing: preset {cfg.preset!r} has no unseen-phrasing "
                         "condition (fashion-mini has)")
    data = preset.load(cfg)
    if cfg.sparse_titles:
        from makevl.data.text import strip_colour_words

        for product in data.products:
            product.title = strip_colour_words(product.title)
    shop = Shop(data.name, data.products, data.queries, data.errors, cfg.split_seed,
                cfg.val_fraction, cfg.test_fraction, preset.category_attribute)
    if cfg.unseen_phrasing:
        shop.queries = preset.unseen_phrasing(
            shop.products, shop.split_name, cfg.split_seed
        )
    return shop
