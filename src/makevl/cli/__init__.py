"""The ``makevl`` command. Each pipeline stage registers its own subcommand module."""

from __future__ import annotations

import argparse
import ctypes
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


# glibc mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Stop glibc from returning big freed blocks to the OS after every batch.

    By default each activation tensor above the mmap threshold is a fresh mmap
    and every free trims the heap, so each batch page-faults its memory back in:
    `index build` spent more system than user CPU time. Freed memory now stays in
    the process for the next batch. Returns False where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    largest = 2**30  # a C int; glibc refuses an mmap threshold above half its heap size
    applied = mallopt(M_TRIM_THRESHOLD, largest) == 1
    for threshold in (largest, 32 * 2**20):  # 32 MiB: glibc's maximum on 64-bit
        if mallopt(M_MMAP_THRESHOLD, threshold) == 1:
            return applied
    return False


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_freed_memory()
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
