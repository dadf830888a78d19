"""A shop: a catalog, a query log with relevance labels, and a product-level split.

Every command (train, eval, report, index) starts from :func:`load_shop`, so the
demo shop, the fashion-mini preset and a user's own files are handled alike.

Splits are by product and deterministic: a product's split is a hash of its id
and the split seed, so it never changes when rows are added or reordered and no
product is in two splits. Test queries are judged against test products only.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from makevl.config import DataConfig
from makevl.data.catalog import Product, QueryRecord, RowError, iter_catalog, iter_queries

SPLITS = ("train", "val", "test")


def project_root() -> Path:
    return Path(__file__).resolve().parents[3]


def shared_dir() -> Path:
    """``../shared`` next to the project root, or ``$MAKEVL_SHARED``."""
    return Path(os.environ.get("MAKEVL_SHARED", project_root().parent / "shared"))


def fashion_mini_dir() -> Path:
    return shared_dir() / "datasets" / "fashion-mini"


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


def read_catalog(
    path: str | Path, columns=None, encoding: str = "utf-8", image_root: str | None = None
) -> tuple[list[Product], list[RowError]]:
    products: list[Product] = []
    errors: list[RowError] = []
    for item in iter_catalog(path, columns, encoding, image_root):
        (errors if isinstance(item, RowError) else products).append(item)
    return products, errors


def read_queries(
    path: str | Path, columns=None, encoding: str = "utf-8"
) -> tuple[list[QueryRecord], list[RowError]]:
    records: list[QueryRecord] = []
    errors: list[RowError] = []
    for item in iter_queries(path, columns, encoding):
        (errors if isinstance(item, RowError) else records).append(item)
    return records, errors


def default_demo_dir() -> Path:
    return project_root() / "runs" / "demo-data"


def load_shop(cfg: DataConfig) -> Shop:
    """Load the shop a run config names: ``demo``, ``fashion-mini`` or ``custom`` files."""
    errors: list[RowError] = []
    if cfg.preset == "fashion-mini":
        from makevl.data.fashion_mini import load_fashion_mini

        products, queries, errors = load_fashion_mini(cfg.catalog, seed=cfg.split_seed)
        name = "fashion-mini"
    else:
        if cfg.preset == "demo":
            catalog = Path(cfg.catalog) if cfg.catalog else default_demo_dir() / "catalog.csv"
            queries_path = Path(cfg.queries) if cfg.queries else catalog.parent / "queries.csv"
            if not catalog.exists():
                from makevl.data.demo import make_demo_shop

                make_demo_shop(catalog.parent, n_products=cfg.demo_products, seed=cfg.split_seed)
            name = "demo"
        else:
            if not cfg.catalog or not cfg.queries:
                raise ValueError("data.preset=custom needs data.catalog and data.queries")
            catalog, queries_path = Path(cfg.catalog), Path(cfg.queries)
            name = catalog.stem
        columns = cfg.columns if cfg.preset == "custom" else None
        products, errors = read_catalog(catalog, columns, cfg.encoding, cfg.image_root)
        queries, query_errors = read_queries(queries_path, columns, cfg.encoding)
        errors += query_errors
    if cfg.sparse_titles:
        from makevl.data.text import strip_colour_words

        for product in products:
            product.title = strip_colour_words(product.title)
    return Shop(name, products, queries, errors, cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
