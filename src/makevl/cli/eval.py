"""``makevl eval``: score BM25, zero-shot MiniLM or a trained checkpoint on a split.

The pool is the split's products and the queries are those judged against them,
so a test score never sees a training product. A checkpoint is evaluated on the
data config it was trained with (same split seed); flags and overrides go on top.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from makevl.config import ConfigError, RunConfig, _merge, load_config, parse_overrides

log = logging.getLogger(__name__)

# The attribute the per-category table groups queries by, per preset.
CATEGORY_ATTRIBUTE = {"demo": "category", "fashion-mini": "masterCategory", "custom": None}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="measure retrieval quality on a split")
    p.add_argument(
        "--system",
        action="append",
        choices=["bm25", "minilm", "checkpoint"],
        help="system to score; repeat to compare several (default: bm25)",
    )
    p.add_argument("--checkpoint", help="checkpoint or run directory (for --system checkpoint)")
    p.add_argument("--config", help="run config YAML")
    p.add_argument("--preset", choices=["demo", "fashion-mini", "custom"], help="data preset")
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument(
        "--sparse-titles",
        action="store_true",
        help="strip colour words from titles (only the photo shows the colour)",
    )
    p.add_argument(
        "--category-attribute",
        help="product attribute for the per-category table "
        "(default: category for demo, masterCategory for fashion-mini); 'none' to skip",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--per-query",
        metavar="FILE",
        help="write per-query metrics as JSONL (system name appended if several)",
    )
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. data.split_seed=1")
    p.set_defaults(func=eval_command)


def resolve_config(args: argparse.Namespace, checkpoint_cfg: RunConfig | None) -> RunConfig:
    """Checkpoint config < --config file < --preset/--sparse-titles < dotted overrides."""
    tree = checkpoint_cfg.model_dump() if checkpoint_cfg is not None else {}
    if args.config:
        tree = _merge(tree, load_config(args.config).model_dump(exclude_unset=True))
    flags: list[str] = []
    if args.preset:
        flags.append(f"data.preset={args.preset}")
    if args.sparse_titles:
        flags.append("data.sparse_titles=true")
    tree = _merge(tree, parse_overrides(flags + list(args.overrides)))
    try:
        return RunConfig.model_validate(tree)
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc


def build_system(name: str, checkpoint_model=None):
    from makevl.evaluation.baselines import BM25System, ZeroShotMiniLMSystem
    from makevl.evaluation.evaluator import EmbeddingSystem

    if name == "bm25":
        return BM25System()
    if name == "minilm":
        return ZeroShotMiniLMSystem()
    from makevl.models.inference import MakeEncoder

    encoder = MakeEncoder(checkpoint_model)
    return EmbeddingSystem("make", encoder.encode_queries, encoder.encode_products)


def load_checkpoint_or_explain(path: str):
    """``load_checkpoint(path)``, with a one-line error instead of a traceback."""
    try:
        from makevl.models.checkpoint import load_checkpoint

        return load_checkpoint(path)
    except ImportError as exc:
        raise SystemExit(f"error: cannot load checkpoints in this build ({exc})") from exc
    except (FileNotFoundError, ValueError) as exc:  # CheckpointError, a corrupt file
        raise SystemExit(f"error: {exc}") from exc


def eval_command(args: argparse.Namespace) -> int:
    from makevl.data.shop import load_shop
    from makevl.evaluation.evaluator import RetrievalEvaluator, comparison_table

    systems = args.system or ["bm25"]
    model, checkpoint_cfg = None, None
    if "checkpoint" in systems:
        if not args.checkpoint:
            print("error: --system checkpoint needs --checkpoint DIR", file=sys.stderr)
            return 2
        model, checkpoint_cfg, _ = load_checkpoint_or_explain(args.checkpoint)
    try:
        cfg = resolve_config(args, checkpoint_cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    shop = load_shop(cfg.data)
    query_set = shop.query_set(args.split)
    if not query_set.queries:
        print(
            f"error: no queries judged against the {args.split} split of {shop.name}",
            file=sys.stderr,
        )
        return 1
    attribute = args.category_attribute or CATEGORY_ATTRIBUTE[cfg.data.preset]
    if attribute == "none" or not any(attribute in p.attributes for p in query_set.pool):
        attribute = None
    evaluator = RetrievalEvaluator(
        query_set, category_attribute=attribute, bootstrap=args.bootstrap, seed=cfg.train.seed
    )
    meta = {
        "shop": shop.name,
        "split": args.split,
        "sparse_titles": cfg.data.sparse_titles,
        "checkpoint": args.checkpoint,
    }
    log.info(
        "%s %s split: %d queries (%d without relevant products), %d products",
        shop.name,
        args.split,
        len(evaluator.scored_ids),
        len(evaluator.skipped_ids),
        len(query_set.pool),
    )

    results = []
    for name in systems:
        result = evaluator.evaluate(build_system(name, model))
        result.meta.update(meta)
        results.append(result)
        if args.per_query:
            path = Path(args.per_query)
            if len(systems) > 1:  # one file per system: runs.jsonl -> runs.bm25.jsonl
                path = path.with_name(f"{path.stem}.{result.system}{path.suffix}")
            result.save_per_query(path)

    if args.json:
        payload = [r.to_dict() for r in results]
        print(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    else:
        for result in results:
            print(result.to_table())
        if len(results) > 1:
            print(comparison_table(results))
    return 0
