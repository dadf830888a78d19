"""``makevl search DIR "query" ...``: top-k products from an index, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys

from makevl.index.runtime import RUNTIME_FLAGS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index from the command line")
    p.add_argument("index_dir", help="index directory built by `makevl index build`")
    p.add_argument("queries", nargs="+", metavar="QUERY")
    p.add_argument("-k", type=int, default=10, help="results per query")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="ATTRIBUTE:VALUE",
        help="only products with this attribute value (repeat: values of one attribute are "
        "OR-ed, attributes AND-ed)",
    )
    p.add_argument(
        "--mode",
        choices=["vector", "hybrid"],
        default="vector",
        help="hybrid: fuse MAKE with BM25 over titles and keywords (reciprocal rank fusion)",
    )
    p.add_argument("--vector-weight", type=float, default=1.0, help="hybrid: MAKE's weight")
    p.add_argument("--lexical-weight", type=float, default=1.0, help="hybrid: BM25's weight")
    p.add_argument("--rrf-k", type=float, default=60.0, help="hybrid: the RRF constant k")
    p.add_argument(
        "--explain",
        action="store_true",
        help="show the catalog keywords Keyword Enhancement attached to each query",
    )
    p.add_argument("--json", action="store_true", help="print JSON lines (one per query)")
    p.add_argument(
        "--checkpoint", help="encode queries with this checkpoint (must be the index's model)"
    )
    p.add_argument(
        "--runtime",
        choices=list(RUNTIME_FLAGS),
        default="auto",
        help="query tower runtime: torch, onnx (fp32) or onnx-int8, as `makevl export` wrote "
        "them; auto: the fastest one that passed the parity gate, else torch (default)",
    )
    p.set_defaults(func=search_command)


def search_command(args: argparse.Namespace) -> int:
    from makevl.data.text import TextError, check_text
    from makevl.index.search import Fusion, Searcher, parse_filters

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
        filters = parse_filters(args.filter)
        fusion = Fusion(args.vector_weight, args.lexical_weight, args.rrf_k)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        searcher = Searcher(
            args.index_dir, checkpoint=args.checkpoint, runtime=RUNTIME_FLAGS[args.runtime]
        )
        results = searcher.search(queries, k=args.k, filters=filters, mode=args.mode, fusion=fusion)
        explained = searcher.query_keywords(queries) if args.explain else None
        searched_as = searcher.searched_as(queries)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for number, (query, hits) in enumerate(zip(queries, results)):
            line = {
                "query": query,
                "searched_as": searched_as[number],
                "runtime": searcher.runtime,
                "results": [h.to_dict() for h in hits],
            }
            if explained is not None:
                line["keywords"] = [{"keyword": w, "weight": x} for w, x in explained[number]]
            print(json.dumps(line, ensure_ascii=False))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    for number, (query, hits) in enumerate(zip(queries, results)):
        title = f"{query!r}: top {len(hits)} of {len(searcher)} ({searcher.runtime} query tower)"
        if searched_as[number] != query:
            title += f", searched as {searched_as[number]!r}"
        if filters:
            title += " where " + " and ".join(f"{a} in {v}" for a, v in filters.items())
        if explained:
            title += "\nKE keywords: " + ", ".join(f"{w} {x:.2f}" for w, x in explained[number])
        table = Table(title=title, title_justify="left")
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
