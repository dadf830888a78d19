"""Data presets by name: where a shop's files come from and how to read them.

A preset bundles everything a command needs to know about a kind of data: how
to load it, its column mapping, the product attribute the per-category tables
group by, and the bundled config ``makevl report`` trains it with. ``load_shop``,
``makevl data``, ``makevl eval`` and ``makevl report`` all look presets up here,
so adding a dataset means adding one :class:`Preset`.

Paths never depend on where the source checkout lies (an installed package has
none): the demo shop defaults to ``runs/demo-data`` under the current directory,
and ``../shared`` is ``$MAKEVL_SHARED`` or ``../shared`` from the current
directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from makevl.config import ColumnMapping, DataConfig
from makevl.data.catalog import (
    CatalogError,
    Product,
    QueryRecord,
    RowError,
    iter_catalog,
    iter_queries,
)
from makevl.data.fashion_mini import FASHION_MINI_COLUMNS, load_fashion_mini
from makevl.data.unseen_phrasing import build_unseen_phrasing_queries


def shared_dir() -> Path:
    """``$MAKEVL_SHARED``, else ``../shared`` from the current directory."""
    return Path(os.environ.get("MAKEVL_SHARED", Path.cwd().parent / "shared"))


def fashion_mini_dir() -> Path:
    return shared_dir() / "datasets" / "fashion-mini"


def default_demo_dir() -> Path:
    """Where the demo preset writes its shop when no catalog is given."""
    return Path("runs") / "demo-data"


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


@dataclass
class LoadedData:
    name: str
    products: list[Product]
    queries: list[QueryRecord]
    errors: list[RowError]


@dataclass(frozen=True)
class Preset:
    name: str
    load: Callable[[DataConfig], LoadedData]
    columns: ColumnMapping  # how its catalog's columns map to fields
    category_attribute: str | None  # groups the per-category tables; None: no table
    report_config: str | None  # bundled config `makevl report` trains with
    # The query log of the "unseen phrasing" condition, given the products and
    # each one's split; None: the preset has no such condition.
    unseen_phrasing: Callable[[list[Product], Callable[[str], str], int], list[QueryRecord]] | None = None


def _load_demo(cfg: DataConfig) -> LoadedData:
    """The synthetic shop; generated only into the default folder, never into a given path."""
    if cfg.catalog:
        catalog = Path(cfg.catalog)
        if not catalog.is_file():
            raise CatalogError(f"catalog not found: {catalog} (data.preset=demo)")
    else:
        catalog = default_demo_dir() / "catalog.csv"
        if not catalog.is_file():
            from makevl.data.demo import make_demo_shop

            make_demo_shop(catalog.parent, n_products=cfg.demo_products, seed=cfg.split_seed)
    queries = Path(cfg.queries) if cfg.queries else catalog.parent / "queries.csv"
    products, errors = read_catalog(catalog, None, cfg.encoding, cfg.image_root)
    records, query_errors = read_queries(queries, None, cfg.encoding)
    return LoadedData("demo", products, records, errors + query_errors)


def _load_fashion_mini(cfg: DataConfig) -> LoadedData:
    catalog = cfg.catalog or fashion_mini_dir() / "styles.csv"
    products, queries, errors = load_fashion_mini(catalog, seed=cfg.split_seed)
    return LoadedData("fashion-mini", products, queries, errors)


def _load_custom(cfg: DataConfig) -> LoadedData:
    if not cfg.catalog or not cfg.queries:
        raise ValueError("data.preset=custom needs data.catalog and data.queries")
    products, errors = read_catalog(cfg.catalog, cfg.columns, cfg.encoding, cfg.image_root)
    queries, query_errors = read_queries(cfg.queries, cfg.columns, cfg.encoding)
    return LoadedData(Path(cfg.catalog).stem, products, queries, errors + query_errors)


PRESETS: dict[str, Preset] = {
    "demo": Preset("demo", _load_demo, ColumnMapping(), "category", "demo-pretrained"),
    "fashion-mini": Preset("fashion-mini", _load_fashion_mini, FASHION_MINI_COLUMNS,
                           "articleType", "fashion-mini", build_unseen_phrasing_queries),
    "custom": Preset("custom", _load_custom, ColumnMapping(), None, None),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def column_mapping(pairs: list[str], base: ColumnMapping | None = None) -> ColumnMapping:
    """``base`` with ``FIELD=COLUMN`` pairs (the repeated ``--column``) on top; empty COLUMN: absent."""
    fields = (base or ColumnMapping()).model_dump()
    for pair in pairs:
        key, sep, value = (part.strip() for part in pair.partition("="))
        if not sep:
            raise ValueError(f"--column {pair!r}: expected FIELD=COLUMN")
        if key not in fields:
            raise ValueError(
                f"--column {pair!r}: unknown field {key!r}; expected one of {', '.join(fields)}"
            )
        fields[key] = None if value in ("", "none") else value
    return ColumnMapping.model_validate(fields)
