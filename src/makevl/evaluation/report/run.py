"""Run every system of a report on one preset's test split and collect the figures.

Trains what needs training (MAKE, its ablations, the CLIP-style query-image
two-tower and the fine-tuned text bi-encoder) with the same data, budget and
config, scores everything with one :class:`RetrievalEvaluator`, then hands the
figures to :mod:`.plots` and :mod:`.render`. The systems come from
:data:`makevl.evaluation.systems.SYSTEMS`.
"""

from __future__ import annotations

import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from makevl.config import ConfigError, DataConfig, RunConfig, resolve_config, with_overrides
from makevl.data.catalog import Product
from makevl.data.presets import get_preset
from makevl.data.shop import load_shop
from makevl.evaluation.evaluator import EmbeddingSystem, EvalResult, RetrievalEvaluator
from makevl.evaluation.report.plots import write_plots
from makevl.evaluation.report.render import write_report
from makevl.evaluation.systems import SYSTEMS, SystemSpec

log = logging.getLogger(__name__)


def preset_config(preset: str, config: str | None, overrides: list[str]) -> RunConfig:
    """The report's base config: ``config`` (a file or bundled name) else the preset's own."""
    name = config or get_preset(preset).report_config
    if name is None:
        raise ConfigError(f"preset {preset!r} has no bundled report config; pass --config")
    return resolve_config(name, [f"data.preset={preset}", *overrides])


def condition_name(data: DataConfig) -> str:
    """The report's condition in words, e.g. "sparse titles (colour words removed), unseen phrasing"."""
    parts = ["sparse titles (colour words removed)" if data.sparse_titles else "full titles"]
    if data.unseen_phrasing:
        parts.append("unseen phrasing")
    return ", ".join(parts)


def machine_description() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.system()} {cpu}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def run_report(
    preset: str,
    out_dir: str | Path,
    config: str | None = None,
    overrides: list[str] | None = None,
    minutes_per_model: float | None = None,
    systems: list[str] | None = None,
    bootstrap: int = 1000,
    command: str = "",
) -> dict[str, Any]:
    """Train, evaluate and write the report for ``preset``; return the JSON figures."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    base = preset_config(preset, config, overrides or [])
    if minutes_per_model is not None:
        base.train.max_minutes = minutes_per_model
    systems = report_systems(base, systems)
    shop = load_shop(base.data)
    (out_dir / "per_query").mkdir(parents=True, exist_ok=True)  # only once the data loads
    query_set = shop.query_set("test")
    category = shop.category_attribute
    evaluator = RetrievalEvaluator(query_set, category_attribute=category, bootstrap=bootstrap,
                                   seed=base.train.seed)
    log.info("test split: %d queries scored over %d products", len(evaluator.scored_ids),
             len(query_set.pool))
    wanted = set(systems)

    results: list[EvalResult] = []
    groups: dict[str, str] = {}
    training: dict[str, Any] = {}
    make_modality_weights: np.ndarray | None = None
    make_model = None

    def record(result: EvalResult, group: str) -> None:
        groups[result.system] = group
        results.append(result)
        result.save_per_query(out_dir / "per_query" / f"{result.system}.jsonl")
        log.info("%s: recall@10 %.4f ndcg@10 %.4f (%.0f s)", result.system,
                 result.metrics["recall@10"], result.metrics["ndcg@10"], result.seconds)

    for spec in SYSTEMS.values():
        if spec.name not in wanted:
            continue
        if spec.trained:
            model, training[spec.name] = _train(spec, base, out_dir)
            system = EmbeddingSystem(spec.name, model.encode_queries, model.encode_products)
            record(evaluator.evaluate(system), spec.group)
            if spec.name == "make":
                make_modality_weights, make_model = system.modality_weights, model
                record(evaluator.evaluate(_untrained_twin(model, base, out_dir)), "reference")
        elif spec.needs_model:
            if make_model is not None:  # built on the report's own trained MAKE
                for system in spec.build(make_model):
                    record(evaluator.evaluate(system), spec.group)
        else:
            for system in spec.build(None):
                record(evaluator.evaluate(system), spec.group)

    figures = {
        "preset": preset,
        "condition": condition_name(base.data),
        "command": command,
        "machine": machine_description(),
        "seconds": round(time.perf_counter() - started, 1),
        "test_queries": len(evaluator.scored_ids),
        "test_products": len(query_set.pool),
        "config": base.model_dump(mode="json"),
        "training": training,
        "groups": groups,
        "results": {r.system: r.to_dict() for r in results},
    }
    if make_modality_weights is not None:
        figures["modal_adaptation"] = modality_weights_by_category(
            query_set.pool, make_modality_weights, category
        )
    plots = write_plots(
        out_dir, results, groups, query_set.pool, make_modality_weights, category, evaluator
    )
    figures["plots"] = plots
    return write_report(out_dir, figures)


def _train(spec: SystemSpec, base: RunConfig, out_dir: Path):
    """Train one MAKE variant from scratch; return its best model and a training summary."""
    from makevl.models.checkpoint import load_checkpoint
    from makevl.models.inference import MakeEncoder
    from makevl.training.trainer import train

    cfg = _variant_config(spec, base, out_dir)
    shutil.rmtree(cfg.train.out_dir, ignore_errors=True)  # a rerun retrains from scratch
    t0 = time.perf_counter()
    outcome = train(cfg)
    model = MakeEncoder(load_checkpoint(outcome.best_checkpoint or outcome.checkpoint)[0])
    summary = {
        "steps": outcome.step,
        "seconds": round(time.perf_counter() - t0, 1),
        "final_loss": outcome.loss,
        "val_recall@10_untrained": outcome.initial_recall,
        "val_recall@10_best": outcome.best_recall,
        "stopped": outcome.stopped,
        "bf16": outcome.bf16,
        "bad_samples": outcome.bad_samples,
    }
    return model, summary


def report_systems(base: RunConfig, systems: list[str] | None) -> list[str]:
    """The systems to run: those named, else every report system less the trained
    variants that would train MAKE's own config (an ablation of something the config
    already leaves out, such as make-no-ke where KE is off). A named one is refused."""

    known = [name for name, spec in SYSTEMS.items() if spec.in_report]
    for name in systems or []:
        if name not in known:
            raise ValueError(f"unknown report system {name!r}; expected one of {', '.join(known)}")
    make = base.model_dump()  # "make" trains the config as it is

    def same_as_make(spec: SystemSpec) -> bool:
        return (spec.trained and spec.name != "make"
                and with_overrides(base, list(spec.train_overrides)).model_dump() == make)

    if not systems:
        return [name for name in known if not same_as_make(SYSTEMS[name])]
    for name in systems:
        spec = SYSTEMS[name]
        if same_as_make(spec):
            raise ValueError(
                f"report system {name!r} ({spec.description}) would train the same config as "
                f"'make': the config already sets {', '.join(spec.train_overrides)}; leave it out"
            )
    return systems


def _variant_config(spec: SystemSpec, base: RunConfig, out_dir: Path) -> RunConfig:
    return with_overrides(base, [*spec.train_overrides,
                                 f"train.out_dir={out_dir / 'models' / spec.name}"])


def _untrained_twin(model, base: RunConfig, out_dir: Path) -> EmbeddingSystem:
    """MAKE before training (same config and seed): the floor to beat."""
    from makevl.models.inference import MakeEncoder
    from makevl.models.make import MakeModel
    from makevl.training.trainer import seed_everything

    cfg = _variant_config(SYSTEMS["make"], base, out_dir)
    seed_everything(cfg.train.seed)
    untrained = MakeEncoder(MakeModel.from_config(cfg, num_keywords=model.model.num_keywords))
    return EmbeddingSystem("make-untrained", untrained.encode_queries, untrained.encode_products)


def modality_weights_by_category(
    pool: list[Product], modality_weights: np.ndarray, attribute: str | None
) -> dict:
    """Mean MA weights (title, image, fused) of the products of each category."""
    by_category: dict[str, list[np.ndarray]] = {}
    for product, weights in zip(pool, modality_weights):
        by_category.setdefault(product.attributes.get(attribute or "", "all"), []).append(weights)
    summary = {}
    for name, rows in sorted(by_category.items(), key=lambda kv: -len(kv[1])):
        rows_np = np.stack(rows)
        summary[name] = {
            "products": len(rows),
            "title": float(rows_np[:, 0].mean()),
            "image": float(rows_np[:, 1].mean()),
            "fused": float(rows_np[:, 2].mean()),
        }
    return summary


