"""``makevl index build|add|delete|info``: the product index behind search and serve.

``build`` encodes a catalog with a trained checkpoint (or the model-free
hashing encoder, for smoke tests) into a new index directory; ``add`` and
``delete`` change an index without re-encoding the products already in it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from makevl.config import ColumnMapping
from makevl.data.presets import PRESETS, column_mapping, get_preset


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build and update the product index")
    actions = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = actions.add_parser("build", help="encode a catalog into a new index")
    model = b.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="checkpoint or run directory of a trained model")
    model.add_argument(
        "--hashing-encoder",
        type=int,
        metavar="DIM",
        help="use the model-free hashed bag-of-words encoder with DIM dims (smoke tests, demos)",
    )
    b.add_argument(
        "--catalog",
        help="catalog file (CSV/JSONL/Parquet); default: the shop the checkpoint was trained on",
    )
    b.add_argument("--out", required=True, help="index directory (replaced atomically)")
    b.add_argument("--factory", default=None, help="FAISS index factory string (default HNSW32)")
    b.add_argument(
        "--exact-threshold",
        type=int,
        default=None,
        help="below this many products use exact search (Flat); default 50000",
    )
    _common(b)
    b.set_defaults(func=build_command)

    a = actions.add_parser("add", help="add or replace (same id) products from a catalog")
    a.add_argument("index_dir")
    a.add_argument("--catalog", required=True)
    a.add_argument("--checkpoint", help="checkpoint to encode with (default: the index's own)")
    _common(a)
    a.set_defaults(func=add_command)

    d = actions.add_parser("delete", help="delete products by id")
    d.add_argument("index_dir")
    d.add_argument("--ids", nargs="+", default=[], help="product ids")
    d.add_argument("--ids-file", help="file with one product id per line")
    d.add_argument("--missing-ok", action="store_true", help="ignore ids not in the index")
    d.set_defaults(func=delete_command)

    i = actions.add_parser("info", help="print an index's manifest summary")
    i.add_argument("index_dir")
    i.add_argument("--verify", action="store_true", help="also check every file's checksum")
    i.set_defaults(func=info_command)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="catalog column mapping of a known dataset (default: the model's data config)",
    )
    p.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=COLUMN",
        help="map a field to your column name, e.g. title=productDisplayName; repeat; "
        "an empty COLUMN marks the field absent",
    )
    p.add_argument("--encoding", default="utf-8", help="text encoding of a CSV/JSONL catalog")
    p.add_argument("--image-root", help="a folder outside the catalog's that images may be in")
    p.add_argument("--batch-size", type=int, default=64, help="products per encoder batch")
    p.add_argument("--limit", type=int, help="index only the first N catalog rows")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def catalog_columns(args: argparse.Namespace, base: ColumnMapping) -> ColumnMapping:
    """``--preset``'s mapping (else ``base``) with the ``--column`` pairs on top."""
    return column_mapping(args.column, get_preset(args.preset).columns if args.preset else base)


def _columns_of_config(config: dict[str, Any] | None) -> ColumnMapping:
    data = (config or {}).get("data", {})
    if data.get("preset") == "custom" and data.get("columns"):
        return ColumnMapping.model_validate(data["columns"])
    return get_preset(data.get("preset", "custom")).columns


def _catalog_rows(path: str, columns: ColumnMapping, args: argparse.Namespace):
    from makevl.data.catalog import iter_catalog

    rows = iter_catalog(path, columns, args.encoding, args.image_root)
    return itertools.islice(rows, args.limit) if args.limit else rows


def _catalog_size(path: str, limit: int | None) -> int | None:
    """Rows to expect, for the progress bar: known up front for Parquet only."""
    if Path(path).suffix.lower() != ".parquet" or not Path(path).is_file():
        return limit
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(path).metadata.num_rows
    return min(rows, limit) if limit else rows


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def build_command(args: argparse.Namespace) -> int:
    from makevl.index.backends.faiss import DEFAULT_EXACT_THRESHOLD, DEFAULT_FACTORY
    from makevl.index.build import build_index
    from makevl.index.encoders import HashingEncoder, load_checkpoint_encoder

    try:
        if args.checkpoint:
            encoder, spec, model_hash, config = load_checkpoint_encoder(args.checkpoint)
        else:
            encoder = HashingEncoder(args.hashing_encoder)
            spec, model_hash, config = encoder.spec, encoder.model_hash, None
        columns = catalog_columns(args, _columns_of_config(config))
        if args.catalog:
            catalog = _catalog_rows(args.catalog, columns, args)
            total = _catalog_size(args.catalog, args.limit)
        elif config is not None:
            from makevl.config import DataConfig
            from makevl.data.shop import load_shop

            # The shop the model was trained on; its unreadable rows are for `makevl data`.
            shop = load_shop(DataConfig.model_validate({**config["data"], "sparse_titles": False}))
            if shop.errors:
                print(
                    f"note: {len(shop.errors)} rows of shop {shop.name!r} could not be read; "
                    "`makevl data validate` lists them",
                    file=sys.stderr,
                )
            catalog = shop.products[: args.limit or None]
            total = len(catalog)
        else:
            raise ValueError("--hashing-encoder needs --catalog")
        report = build_index(
            catalog,
            args.out,
            encoder,
            encoder_spec=spec,
            model_hash=model_hash,
            config=config,
            columns=columns.model_dump(),
            factory=args.factory or DEFAULT_FACTORY,
            exact_threshold=(
                DEFAULT_EXACT_THRESHOLD if args.exact_threshold is None else args.exact_threshold
            ),
            batch_size=args.batch_size,
            total=total,
            progress=not args.quiet,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)
    print(report.summary())
    return 0


def add_command(args: argparse.Namespace) -> int:
    from makevl.index.build import update_index
    from makevl.index.encoders import load_checkpoint_encoder
    from makevl.index.store import read_manifest

    try:
        manifest = read_manifest(args.index_dir)
        stored = manifest.get("columns")
        base = (
            ColumnMapping.model_validate(stored)
            if stored
            else _columns_of_config(manifest.get("config"))
        )
        columns = catalog_columns(args, base)
        encoder = model_hash = None
        if args.checkpoint:
            encoder, _spec, model_hash, _config = load_checkpoint_encoder(args.checkpoint)
        report = update_index(
            args.index_dir,
            add=_catalog_rows(args.catalog, columns, args),
            encoder=encoder,
            model_hash=model_hash,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)
    print(report.summary())
    return 0


def delete_command(args: argparse.Namespace) -> int:
    from makevl.index.build import update_index

    ids = list(args.ids)
    try:
        if args.ids_file:
            lines = Path(args.ids_file).read_text(encoding="utf-8").splitlines()
            ids += [line.strip() for line in lines if line.strip()]
        if not ids:
            raise ValueError("give product ids with --ids or --ids-file")
        report = update_index(
            args.index_dir, delete=ids, missing_ok=args.missing_ok, progress=False
        )
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)
    print(report.summary())
    return 0


def info_command(args: argparse.Namespace) -> int:
    from makevl.index.store import read_manifest, verify_files

    try:
        manifest = read_manifest(args.index_dir)
        if args.verify:
            verify_files(Path(args.index_dir), manifest)
    except (OSError, ValueError, RuntimeError) as exc:
        return _fail(exc)
    shown = {k: v for k, v in manifest.items() if k not in ("config",)}
    print(json.dumps(shown, indent=2))
    if args.verify:
        print("all files match their checksums")
    return 0
