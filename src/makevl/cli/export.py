"""``makevl export DIR [--quantize int8]``: compile an index's query tower for ONNX Runtime."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="compile the index model's query tower to ONNX (checked against torch)",
        description=(
            "Export the query side of the model that built the index (text tower, projection, "
            "keyword memory) to ONNX, check it against torch on a query set, and publish it as "
            "a new index version. The Searcher and the server then run queries through the "
            "fastest runtime recorded. A runtime that fails the parity check is not written."
        ),
    )
    p.add_argument("index_dir", help="index directory built from a checkpoint")
    p.add_argument(
        "--quantize", choices=["int8"], help="also write an int8 tower (if it passes parity)"
    )
    p.add_argument(
        "--queries",
        type=Path,
        help="UTF-8 text file, one parity query per line (default: the index's product titles)",
    )
    p.set_defaults(func=export_command)


def read_queries(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the parity queries: {exc}") from exc
    queries = [line.strip() for line in lines if line.strip()]
    if not queries:
        raise ValueError(f"{path}: no queries (one per line expected)")
    return queries


def export_command(args: argparse.Namespace) -> int:
    from makevl.index.runtime import export_runtimes

    try:
        queries = read_queries(args.queries) if args.queries else None
        report = export_runtimes(args.index_dir, quantize=args.quantize, queries=queries)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 1 if report.refused else 0
