"""``makevl index build|add|delete|info``: the product index behind search and serve.

``build`` encodes a catalog with a trained checkpoint (or the model-free
hashing encoder, for smoke tests) into a new index directory; ``add`` and
``delete`` change an index without re-encoding the products already in it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from makevl.data.presets import PRESETS

if TYPE_CHECKING:
    from makevl.index.actions import CatalogOptions


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
    b.add_argument("--backend", choices=["faiss", "milvus"], default="faiss", help="vector backend")
    b.add_argument("--factory", default=None, help="FAISS index factory string (default HNSW32)")
    b.add_argument(
        "--exact-threshold",
        type=int,
        default=None,
        help="below this many products use exact search (Flat); default 50000",
    )
    b.add_argument(
        "--milvus-uri",
        help="Milvus: a local .db file (Milvus Lite; relative paths sit beside the index) "
        "or a server address like http://host:19530 (default milvus.db)",
    )
    b.add_argument(
        "--milvus-collection",
        help="Milvus: collection name, unique per index on a shared server; each version "
        "gets NAME_v<stamp> (default 'products'; required with a server address)",
    )
    b.add_argument(
        "--milvus-index",
        choices=["HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX"],
        help="Milvus: index type at or above the exact threshold (default HNSW)",
    )
    b.add_argument(
        "--product-runtime",
        choices=["onnx", "torch"],
        default="onnx",
        help="run the model's product side through ONNX Runtime if it matches torch "
        "(parity-checked, recorded in the manifest; torch without onnxruntime), or torch",
    )
    b.add_argument("--image-workers", type=int, default=1, help="processes decoding product images")
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


def _catalog_options(args: argparse.Namespace) -> CatalogOptions:
    from makevl.index.actions import CatalogOptions

    return CatalogOptions(args.preset, args.column, args.encoding, args.image_root, args.limit)


def _report(action: Callable[[], Any], show: bool = True) -> int:
    """Run an index action; print its summary (if ``show``), or the error (exit code 1)."""
    try:
        report = action()
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if show:
        print(report.summary())
    return 0


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The chosen vector backend's options from the flags; unset ones keep its defaults."""
    milvus = {
        "uri": args.milvus_uri,
        "collection_prefix": args.milvus_collection,
        "index_type": args.milvus_index,
    }
    if args.backend == "faiss":
        if any(value is not None for value in milvus.values()):
            raise ValueError(
                "--milvus-uri/--milvus-collection/--milvus-index need --backend milvus"
            )
        options = {"factory": args.factory}
    elif args.factory:
        raise ValueError("--factory is for FAISS; with --backend milvus use --milvus-index")
    elif "://" in (args.milvus_uri or "") and not args.milvus_collection:
        raise ValueError(
            "--milvus-collection is needed with a Milvus server: old versions' collections of "
            "that name are dropped, so give each index its own"
        )
    else:
        options = milvus
    options["exact_threshold"] = args.exact_threshold
    return {key: value for key, value in options.items() if value is not None}


def build_command(args: argparse.Namespace) -> int:
    from makevl.index.actions import build_from_catalog
    from makevl.training.distributed import cleanup, setup

    # Under torchrun each rank encodes a share of the catalog (on its GPU if there are
    # GPUs) and rank 0 writes the index and prints its summary.
    ranks = setup() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None
    try:
        return _report(
            lambda: build_from_catalog(
                args.out,
                checkpoint=args.checkpoint,
                hashing_dim=args.hashing_encoder,
                catalog=args.catalog,
                options=_catalog_options(args),
                batch_size=args.batch_size,
                progress=not args.quiet,
                backend_name=args.backend,
                product_runtime=args.product_runtime,
                image_workers=args.image_workers,
                **_backend_options(args),
            ),
            show=ranks is None or ranks.is_main,
        )
    finally:
        if ranks is not None:
            cleanup(ranks)


def add_command(args: argparse.Namespace) -> int:
    from makevl.index.actions import add_from_catalog

    return _report(
        lambda: add_from_catalog(
            args.index_dir,
            args.catalog,
            checkpoint=args.checkpoint,
            options=_catalog_options(args),
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
    )


def delete_command(args: argparse.Namespace) -> int:
    from makevl.index.actions import delete_products

    return _report(
        lambda: delete_products(args.index_dir, args.ids, args.ids_file, args.missing_ok)
    )


def info_command(args: argparse.Namespace) -> int:
    from makevl.index.actions import index_info

    try:
        info = index_info(args.index_dir, verify=args.verify)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2))
    if args.verify:
        print("all files match their checksums")
    return 0
