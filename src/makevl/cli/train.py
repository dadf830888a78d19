"""``makevl train``: pre-train MAKE from a run config; the same command works under torchrun.

makevl train --config demo-tiny
makevl train --config my.yaml train.lr=1e-3 train.max_steps=500
makevl train --config my.yaml --resume
torchrun --nproc_per_node=2 -m makevl.cli train --config my.yaml
"""

from __future__ import annotations

import argparse
import sys

from makevl.config import bundled_config_names


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="pre-train MAKE (one process or under torchrun)")
    p.add_argument(
        "--config",
        required=True,
        help="run config YAML, or the name of a bundled one: "
        + ", ".join(bundled_config_names()),
    )
    p.add_argument("--resume", action="store_true", help="continue from train.out_dir/last")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.max_steps=100")
    p.set_defaults(func=train_command)


def train_command(args: argparse.Namespace) -> int:
    from makevl.config import ConfigError, resolve_config
    from makevl.training.trainer import TrainingError, train

    try:
        cfg = resolve_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"makevl train: {exc}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, resume=args.resume)
    except (TrainingError, ValueError, FileNotFoundError) as exc:
        print(f"makevl train: {exc}", file=sys.stderr)
        return 1

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    print(
        f"step {result.step} (epoch {result.epoch}), loss {show(result.loss)}, "
        f"{result.samples_per_s:.1f} samples/s; val Recall@10 untrained {show(result.initial_recall)}"
        f" -> last {show(result.last_recall)}, best {show(result.best_recall)}"
    )
    if result.bad_samples:
        print(f"skipped bad samples: {result.bad_samples}")
    print(f"checkpoint: {result.best_checkpoint or result.checkpoint}")
    if result.stopped in ("SIGINT", "SIGTERM"):
        return 130 if result.stopped == "SIGINT" else 143
    return 0
