"""``makevl search DIR "query" ...``: top-k products from an index, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index from the command line")
    p.add_argument("index_dir", help="index directory built by `makevl index build`")
    p.add_argument("queries", nargs="+", metavar="QUERY")
    p.add_argument("-k", type=int, default=10, help="results per query")
    p.add_argument("--json", action="store_true", help="print JSON lines (one per query)")
    p.add_argument(
        "--checkpoint", help="encode queries with this checkpoint (must be the index's model)"
    )
    p.set_defaults(func=search_command)


def search_command(args: argparse.Namespace) -> int:
    from makevl.data.text import TextError, check_text
    from makevl.index.search import Searcher

    if args.k < 1:
        print("error: -k must be at least 1", file=sys.stderr)
        return 2
    queries = [q.strip() for q in args.queries]
    if not all(queries):
        print("error: empty query", file=sys.stderr)
        return 2
    try:  # a non-UTF-8 argument arrives with lone surrogates; no tokenizer takes those
        for number, query in enumerate(queries, 1):
            check_text(query, f"query {number}")
    except TextError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        searcher = Searcher(args.index_dir, checkpoint=args.checkpoint)
        results = searcher.search(queries, k=args.k)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for query, hits in zip(queries, results):
            print(
                json.dumps(
                    {"query": query, "results": [h.to_dict() for h in hits]}, ensure_ascii=False
                )
            )
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    for query, hits in zip(queries, results):
        table = Table(title=f"{query!r}: top {len(hits)} of {len(searcher)}", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("score", justify="right")
        table.add_column("id")
        table.add_column("title")
        table.add_column("title/image/fused", justify="right")
        for rank, hit in enumerate(hits, 1):
            weights = "/".join(f"{w:.2f}" for w in hit.modality_weights.values())
            table.add_row(str(rank), f"{hit.score:.3f}", hit.id, hit.title, weights)
        console.print(table)
    return 0
