"""``makevl serve DIR``: the search API and web page over one index (uvicorn)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the search API and web page")
    p.add_argument("index_dir", help="index directory built by `makevl index build`")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--checkpoint", help="encode queries with this checkpoint (must be the index's model)"
    )
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    from makevl.index.search import Searcher
    from makevl.serving.app import create_app

    try:
        searcher = Searcher(args.index_dir, checkpoint=args.checkpoint)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"serving {len(searcher)} products from {args.index_dir} on http://{args.host}:{args.port}/",
        flush=True,
    )
    uvicorn.run(create_app(searcher), host=args.host, port=args.port, log_level=args.log_level)
    return 0
