"""``makevl serve DIR``: the search API and web page over one index (uvicorn).

Concurrent searches are batched by one worker (``--max-batch``, ``--max-wait-ms``,
``--queue-size``, ``--deadline-ms``, ``--threads``) that encodes and searches in a
process of its own (``--worker``), and a new index version published at ``DIR``
is picked up within ``--reload-s`` seconds.
"""

from __future__ import annotations

import argparse
import sys

from makevl.index.runtime import RUNTIME_FLAGS
from makevl.serving.batching import BatchSettings, default_threads
from makevl.serving.limits import BODY_TIMEOUT_S, MAX_BODY_BYTES

# Slow or idle clients (request bodies have their own limits, in the app): 5 s to send the
# next request on a kept-alive connection, at most 16 KiB of request line and headers,
# and shutdown within 10 s whatever the open connections do. The h11 parser, because
# the header limit is h11's, and httptools keeps a connection that sent only blank
# lines open with no answer (tests/serving/test_hostile.py).
UVICORN_LIMITS = {
    "http": "h11",
    "timeout_keep_alive": 5,
    "h11_max_incomplete_event_size": 16 * 1024,
    "timeout_graceful_shutdown": 10,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the search API and web page")
    p.add_argument("index_dir", help="index directory built by `makevl index build`")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument(
        "--checkpoint", help="encode queries with this checkpoint (must be the index's model)"
    )
    p.add_argument(
        "--runtime",
        choices=list(RUNTIME_FLAGS),
        default="auto",
        help="query tower runtime: torch, onnx (fp32) or onnx-int8, as `makevl export` wrote "
        "them; auto: of those that passed the parity gate, the fastest in batches (fp32, "
        "then int8), else torch (default); shown in /healthz",
    )
    p.add_argument(
        "--image-root",
        help="serve image files only from under this folder (default: the catalog folders "
        "recorded in the index; an index built before they were recorded needs this)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=128,
        help="concurrent connections before new requests get 503 (default 128)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT_S,
        help=f"seconds a client has to send a request body, else 408 (default {BODY_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        help=f"largest request body, else 413 (default {MAX_BODY_BYTES})",
    )
    defaults = BatchSettings()
    p.add_argument(
        "--max-batch",
        type=int,
        default=defaults.max_batch,
        help=f"queries per encoder call (default {defaults.max_batch})",
    )
    p.add_argument(
        "--max-wait-ms",
        type=float,
        default=defaults.max_wait_ms,
        help=f"how long a search waits for others to batch with (default {defaults.max_wait_ms:g})",
    )
    p.add_argument(
        "--queue-size",
        type=int,
        default=defaults.queue_size,
        help=f"searches waiting for the model before new ones get 503 "
        f"(default {defaults.queue_size})",
    )
    p.add_argument(
        "--deadline-ms",
        type=float,
        default=defaults.deadline_ms,
        help="a search that waited this long for the model gets 503 instead of a late answer "
        f"(default {defaults.deadline_ms:g})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=default_threads(),
        help="torch, ONNX Runtime and FAISS threads of the search worker (default: all "
        f"cores but one, left for HTTP: {default_threads()})",
    )
    p.add_argument(
        "--worker",
        choices=["process", "thread"],
        default="process",
        help="where the query tower and the vector search run: a worker process (default: "
        "the HTTP event loop keeps the GIL to itself) or a thread of the server process",
    )
    p.add_argument(
        "--reload-s",
        type=float,
        default=1.0,
        help="check for a new index version this often, in seconds; 0: never (default 1)",
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
        batching = BatchSettings(
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            queue_size=args.queue_size,
            deadline_ms=args.deadline_ms,
            threads=args.threads,
            process=args.worker == "process",
        )
        runtime = RUNTIME_FLAGS[args.runtime]
        searcher = Searcher(
            args.index_dir,
            checkpoint=args.checkpoint,
            runtime=runtime,
            query_threads=args.threads,
            batched=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    app = create_app(
        searcher,
        image_root=args.image_root,
        max_body_bytes=args.max_body_bytes,
        body_timeout=args.body_timeout,
        batching=batching,
        reload_s=args.reload_s,
        checkpoint=args.checkpoint,
        runtime=runtime,  # new index versions load with the same runtime
        query_threads=args.threads,
        batched=True,  # `auto` picks the runtime fastest in batches
    )
    print(
        f"serving {len(searcher)} products from {args.index_dir} ({searcher.runtime} query tower) "
        f"on http://{args.host}:{args.port}/",
        flush=True,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        limit_concurrency=args.max_connections,
        **UVICORN_LIMITS,
    )
    return 0
