"""``makevl data``: validate a catalog, make the demo shop, print statistics, write pair shards."""

from __future__ import annotations

import argparse
import json
import sys
import time

from makevl.config import ConfigError, load_config
from makevl.data.catalog import CatalogError
from makevl.data.presets import PRESETS, column_mapping, get_preset


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="validate, generate and inspect data")
    data_sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = data_sub.add_parser("validate", help="check a catalog and query log")
    p.add_argument("catalog", help="catalog file (.csv, .tsv, .jsonl, .parquet)")
    p.add_argument("--queries", help="query log file")
    p.add_argument("--preset", choices=list(PRESETS), default="custom",
                   help="column mapping of a known dataset")
    p.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                   help="map a field to your column name, e.g. title=productDisplayName")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the catalog and log")
    p.add_argument("--image-root", help="a folder outside the catalog's that images may be in")
    p.add_argument("--max-title-chars", type=int, default=512)
    p.add_argument("--max-bad-fraction", type=float, default=0.05)
    p.add_argument("--no-images", action="store_true", help="skip decoding images")
    p.add_argument("--workers", type=int, default=4, help="threads decoding images")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=validate_command)

    p = data_sub.add_parser("make-demo", help="write the built-in synthetic demo shop")
    p.add_argument("out", help="output folder")
    p.add_argument("--products", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=96)
    p.set_defaults(func=make_demo_command)

    p = data_sub.add_parser("shard", help="write train pair shards for streaming training")
    p.add_argument("catalog", nargs="+", help="catalog files or folders of them")
    p.add_argument("--queries", nargs="+", required=True, help="query-log files or folders")
    p.add_argument("--out", required=True, help="new folder for the shards (data.train_shards)")
    p.add_argument("--shards", type=int, required=True, help="number of pair shards")
    p.add_argument("--preset", choices=list(PRESETS), default="custom",
                   help="column mapping of a known dataset")
    p.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                   help="map a field to your column name, e.g. title=productDisplayName")
    p.add_argument("--encoding", default="utf-8", help="text encoding of the catalog and log")
    p.add_argument("--image-root", help="a folder outside the catalog's that images may be in")
    p.add_argument("--split-seed", type=int, default=0, help="as data.split_seed")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as data.val_fraction")
    p.add_argument("--test-fraction", type=float, default=0.2, help="as data.test_fraction")
    p.add_argument("--max-title-chars", type=int, default=512)
    p.add_argument("--check-images", action="store_true",
                   help="decode every image (slow); by default only references are checked")
    p.add_argument("--vocab-products", type=int, default=100_000,
                   help="train products sampled to mine the keyword vocabulary")
    p.set_defaults(func=shard_command)

    p = data_sub.add_parser("stats", help="statistics of a shop (preset or your files)")
    p.add_argument("--config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.preset=fashion-mini")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=stats_command)


def validate_command(args: argparse.Namespace) -> int:
    from makevl.data.validate import validate

    try:
        columns = column_mapping(args.column, get_preset(args.preset).columns)
        report = validate(
            args.catalog,
            args.queries,
            columns,
            max_title_chars=args.max_title_chars,
            max_bad_fraction=args.max_bad_fraction,
            check_images=not args.no_images,
            workers=args.workers,
            required_fields=columns.attributes,
            encoding=args.encoding,
            image_root=args.image_root,
        )
    except (CatalogError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else report.to_text())
    return 0 if report.ok else 1


def shard_command(args: argparse.Namespace) -> int:
    from makevl.data.shard import ShardError, shard_shop

    start = time.perf_counter()
    try:
        manifest = shard_shop(
            args.catalog, args.queries, args.out, args.shards,
            column_mapping(args.column, get_preset(args.preset).columns), args.encoding,
            args.image_root, args.split_seed, args.val_fraction, args.test_fraction,
            args.max_title_chars, args.check_images, args.vocab_products,
        )  # fmt: skip
    except (CatalogError, ShardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    skipped = ", ".join(f"{k}: {n}" for k, n in manifest.skipped.items()) or "none"
    print(f"{manifest.rows} train pairs in {len(manifest.shards)} shards written to {args.out} "
          f"in {time.perf_counter() - start:.1f} s; rows outside the shards skipped: {skipped}")
    return 0


def make_demo_command(args: argparse.Namespace) -> int:
    from makevl.data.demo import make_demo_shop

    start = time.perf_counter()
    stats = make_demo_shop(args.out, n_products=args.products, seed=args.seed,
                           image_size=args.image_size)
    seconds = time.perf_counter() - start
    print(
        f"demo shop: {stats['products']} products, {stats['queries']} queries, "
        f"{stats['pairs']} relevance pairs written to {args.out} in {seconds:.1f} s "
        f"({stats['products'] / max(seconds, 1e-9):.0f} products/s)"
    )
    return 0


def stats_command(args: argparse.Namespace) -> int:
    from makevl.data.shop import load_shop
    from makevl.data.stats import format_statistics, shop_statistics

    try:
        stats = shop_statistics(load_shop(load_config(args.config, args.overrides).data))
    except (ConfigError, CatalogError, ValueError, OSError) as exc:
        print(f"makevl data stats: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(stats, indent=2) if args.json else format_statistics(stats))
    return 0
