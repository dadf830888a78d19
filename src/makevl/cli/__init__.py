"""The ``makevl`` command. Each pipeline stage registers its own subcommand module."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

# Subcommand modules, in pipeline order. Each defines ``register(subparsers)``
# which adds its parser and sets ``func`` to a callable taking the parsed args
# and returning an exit code.
SUBCOMMANDS = ["data", "demo", "train", "eval", "report", "index", "export", "search", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="makevl", description="Text-to-multimodal product retrieval (MAKE)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"makevl.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"makevl.cli.{name}":
                continue  # stage not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
