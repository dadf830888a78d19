"""``makevl eval``: score registered systems on one split of a shop.

The pool is the split's products and the queries are those judged against them,
so a test score never sees a training product. A checkpoint is evaluated on the
data config it was trained with (same split seed); a config file, flags and
overrides go on top.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from makevl.config import ConfigError, RunConfig, _merge, load_config, parse_overrides
from makevl.evaluation.evaluator import EvalResult, RetrievalEvaluator
from makevl.evaluation.systems import get_system

log = logging.getLogger(__name__)


class NoQueriesError(ValueError):
    """The split has no query judged against its products."""


def eval_config(
    checkpoint_cfg: RunConfig | None,
    config: str | None = None,
    preset: str | None = None,
    sparse_titles: bool = False,
    overrides: list[str] | None = None,
    unseen_phrasing: bool = False,
) -> RunConfig:
    """Checkpoint config < ``config`` file < preset and condition flags < dotted overrides."""
    tree = checkpoint_cfg.model_dump() if checkpoint_cfg is not None else {}
    if config:
        tree = _merge(tree, load_config(config).model_dump(exclude_unset=True))
    flags = [f"data.preset={preset}"] if preset else []
    if sparse_titles:
        flags.append("data.sparse_titles=true")
    if unseen_phrasing:
        flags.append("data.unseen_phrasing=true")
    tree = _merge(tree, parse_overrides(flags + list(overrides or [])))
    try:
        return RunConfig.model_validate(tree)
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc


def run_eval(
    systems: list[str],
    checkpoint: str | None = None,
    config: str | None = None,
    preset: str | None = None,
    sparse_titles: bool = False,
    overrides: list[str] | None = None,
    split: str = "test",
    unseen_phrasing: bool = False,
    category_attribute: str | None = None,
    bootstrap: int = 1000,
    per_query: str | None = None,
    runtime: str = "torch",
) -> list[EvalResult]:
    """Score each named system on ``split``; ``category_attribute`` defaults to the preset's.

    ``runtime`` (``"onnx-fp32"``, ``"onnx-int8"``) runs the checkpoint as an
    exported index serves it instead of in torch (:class:`ServedEncoder`).

    Raises ``ValueError`` (a ``ConfigError``, ``CatalogError`` or :class:`NoQueriesError`)
    with a message naming what to fix.
    """
    from makevl.data.shop import load_shop

    specs = [get_system(name) for name in systems]
    for spec in specs:
        if spec.trained:
            raise ValueError(f"system {spec.name!r} is trained by `makevl report`; "
                             "train it there and evaluate it with --system checkpoint")
    model, checkpoint_cfg = None, None
    if any(spec.needs_model for spec in specs):
        if not checkpoint:
            needing = [spec.name for spec in specs if spec.needs_model]
            raise ValueError(f"--system {', '.join(needing)} needs --checkpoint DIR")
        model, checkpoint_cfg = _load_checkpoint(checkpoint)
    elif runtime != "torch":
        raise ValueError(f"--runtime {runtime} needs a system with a checkpoint")
    cfg = eval_config(checkpoint_cfg, config, preset, sparse_titles, overrides, unseen_phrasing)

    shop = load_shop(cfg.data)
    query_set = shop.query_set(split)
    if not query_set.queries:
        raise NoQueriesError(f"no queries judged against the {split} split of {shop.name}")
    attribute = category_attribute or shop.category_attribute
    if attribute == "none" or not any(attribute in p.attributes for p in query_set.pool):
        attribute = None
    evaluator = RetrievalEvaluator(
        query_set, category_attribute=attribute, bootstrap=bootstrap, seed=cfg.train.seed
    )
    log.info("%s %s split: %d queries (%d without relevant products), %d products", shop.name,
             split, len(evaluator.scored_ids), len(evaluator.skipped_ids), len(query_set.pool))
    meta = {"shop": shop.name, "split": split, "sparse_titles": cfg.data.sparse_titles,
            "unseen_phrasing": cfg.data.unseen_phrasing, "checkpoint": checkpoint,
            "runtime": runtime}

    results = []
    with tempfile.TemporaryDirectory(prefix="makevl-eval-") as folder:
        if model is not None and runtime != "torch":
            from makevl.index.product_runtime import ServedEncoder

            model = ServedEncoder(model, runtime, Path(folder))
        for spec in specs:
            for system in spec.build(model):
                result = evaluator.evaluate(system)
                result.meta.update(meta)
                results.append(result)
    if per_query:
        for result in results:
            path = Path(per_query)
            if len(results) > 1:  # one file per system: runs.jsonl -> runs.bm25.jsonl
                path = path.with_name(f"{path.stem}.{result.system}{path.suffix}")
            result.save_per_query(path)
    return results


def _load_checkpoint(path: str):
    """``(model, config)`` of a checkpoint; a clear error instead of a traceback."""
    try:
        from makevl.models.checkpoint import load_checkpoint
        from makevl.models.inference import MakeEncoder
    except ImportError as exc:
        raise ValueError(f"cannot load checkpoints in this build ({exc})") from exc
    try:
        model, cfg, _ = load_checkpoint(path)
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from exc
    return MakeEncoder(model), cfg
