"""``makevl eval``: score registered systems (BM25, zero-shot MiniLM, a checkpoint, ...) on a split."""

from __future__ import annotations

import argparse
import json
import sys

from makevl.data.presets import PRESETS
from makevl.evaluation.systems import SYSTEMS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure retrieval quality on a split")
    p.add_argument(
        "--system",
        action="append",
        choices=[name for name, spec in SYSTEMS.items() if not spec.trained],
        help="system to score; repeat to compare several (default: bm25)",
    )
    p.add_argument("--checkpoint", help="checkpoint or run directory (for --system checkpoint)")
    p.add_argument("--config", help="run config YAML")
    p.add_argument("--preset", choices=list(PRESETS), help="data preset")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument(
        "--sparse-titles",
        action="store_true",
        help="strip colour words from titles (only the photo shows the colour)",
    )
    p.add_argument(
        "--unseen-phrasing",
        action="store_true",
        help="test queries use synonyms, word orders and typos training never saw (fashion-mini)",
    )
    p.add_argument(
        "--category-attribute",
        help="product attribute for the per-category table (default: the preset's); 'none' to skip",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx", "onnx-int8"],
        default="torch",
        help="run the checkpoint as an exported index serves it: product towers and query "
        "side in ONNX Runtime (onnx: fp32; onnx-int8: int8 query side)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--per-query",
        metavar="FILE",
        help="write per-query metrics as JSONL (system name appended if several)",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.split_seed=1")
    p.set_defaults(func=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    from makevl.evaluation.evaluator import comparison_table
    from makevl.evaluation.run_eval import NoQueriesError, run_eval
    from makevl.index.runtime import RUNTIME_FLAGS

    try:
        results = run_eval(
            args.system or ["bm25"],
            checkpoint=args.checkpoint,
            config=args.config,
            preset=args.preset,
            sparse_titles=args.sparse_titles,
            unseen_phrasing=args.unseen_phrasing,
            overrides=args.overrides,
            split=args.split,
            category_attribute=args.category_attribute,
            bootstrap=args.bootstrap,
            per_query=args.per_query,
            runtime=RUNTIME_FLAGS[args.runtime],
        )
    except NoQueriesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        payload = [r.to_dict() for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    else:
        for result in results:
            print(result.to_table())
        if len(results) > 1:
            print(comparison_table(results))
    return 0
