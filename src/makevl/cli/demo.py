"""``makevl demo``: the README's main job, end to end on the built-in demo shop."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on the built-in demo shop")
    p.add_argument("--out", default="runs/demo", help="folder for data, checkpoints and index")
    p.add_argument("--products", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None,
                   help="run config, a file or a bundled name (default: demo-tiny)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides for training")
    p.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from makevl.config import ConfigError
    from makevl.pipeline import run_demo

    try:
        return run_demo(args.out, args.products, args.seed, args.config, args.overrides)
    except ConfigError as exc:
        print(f"makevl demo: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError, RuntimeError) as exc:  # a stage failed; its message says which
        print(f"makevl demo: {exc}", file=sys.stderr)
        return 1
