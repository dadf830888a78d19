"""``makevl report``: every system side by side on one preset, written down.

Trains what needs training (MAKE, its ablations, the CLIP-style query-image
two-tower and the fine-tuned text bi-encoder) with the same data, budget and
config, scores everything with one :class:`RetrievalEvaluator` on the test
split, and writes ``report.md``, ``report.json`` and PNG plots.

The trained baselines are MAKE models with parts switched off, so "trained the
same way" holds by construction:
- ``clip-query-image``: product vector = image branch, query-product loss only.
- ``text-bi-encoder``: product vector = title branch, query-product loss only.
- ``static-fusion``: MAKE's own title and image branch vectors mixed with fixed
  weights, as vector engines do, instead of Modal Adaptation's learned ones.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from makevl.config import RunConfig, load_config, with_overrides
from makevl.data.catalog import Product
from makevl.data.shop import load_shop, project_root
from makevl.evaluation.baselines import BM25System, ZeroShotMiniLMSystem, static_fusion_grid
from makevl.evaluation.evaluator import EmbeddingSystem, EvalResult, RetrievalEvaluator

log = logging.getLogger(__name__)

# Only the main retrieval loss, for the single-branch baselines.
_MAIN_LOSS_ONLY = [
    "loss.title_image=0",
    "loss.query_title=0",
    "loss.query_image=0",
    "loss.keyword_query=0",
    "loss.keyword_prediction=0",
    "model.keyword_enhancement=false",
]


@dataclass
class TrainedSpec:
    name: str
    group: str  # "make", "ablation" or "baseline"
    overrides: list[str]
    description: str


TRAINED_SYSTEMS = [
    TrainedSpec("make", "make", [], "MAKE: query/title/image/fusion encoders, MA and KE"),
    TrainedSpec("make-no-ma-equal", "ablation", ["model.modal_adaptation=false"],
                "no Modal Adaptation: fixed equal weights over title/image/fused"),
    TrainedSpec("make-no-ma-fused", "ablation", ["model.product_branch=fused"],
                "no Modal Adaptation: fused vector only"),
    TrainedSpec("make-no-ke", "ablation",
                ["model.keyword_enhancement=false", "loss.keyword_query=0",
                 "loss.keyword_prediction=0"],
                "no Keyword Enhancement (no pseudo-queries, memory or prediction)"),
    TrainedSpec("make-shared-encoder", "ablation", ["model.shared_query_title_encoder=true"],
                "one text encoder shared by queries and titles"),
    TrainedSpec("clip-query-image", "baseline", ["model.product_branch=image", *_MAIN_LOSS_ONLY],
                "CLIP-style two-tower: query vs product image, trained here"),
    TrainedSpec("text-bi-encoder", "baseline", ["model.product_branch=title", *_MAIN_LOSS_ONLY],
                "text-only bi-encoder: query vs title, fine-tuned here"),
]
TEXT_ONLY = ("bm25", "minilm-zero-shot", "text-bi-encoder")
_PLOT_TITLES = {
    "Recall@K per system": "recall_at_k.png",
    "Modal Adaptation image weight per category": "ma_image_weight.png",
    "Top-5 of MAKE and of the best baseline": "examples.png",
}
PRESET_CONFIGS = {"demo": "demo-pretrained.yaml", "fashion-mini": "fashion-mini.yaml"}
CATEGORY_ATTRIBUTE = {"demo": "category", "fashion-mini": "articleType"}


def preset_config(preset: str, config: str | None, overrides: list[str]) -> RunConfig:
    path = Path(config) if config else project_root() / "src/makevl/configs" / PRESET_CONFIGS[preset]
    return load_config(path, [f"data.preset={preset}", *overrides])


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
    if preset not in PRESET_CONFIGS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESET_CONFIGS)}")
    (out_dir / "per_query").mkdir(parents=True, exist_ok=True)
    base = preset_config(preset, config, overrides or [])
    if minutes_per_model is not None:
        base.train.max_minutes = minutes_per_model
    shop = load_shop(base.data)
    query_set = shop.query_set("test")
    category = CATEGORY_ATTRIBUTE.get(preset)
    evaluator = RetrievalEvaluator(query_set, category_attribute=category, bootstrap=bootstrap,
                                   seed=base.train.seed)
    log.info("test split: %d queries scored over %d products", len(evaluator.scored_ids),
             len(query_set.pool))
    wanted = set(systems) if systems else None

    results: list[EvalResult] = []
    groups: dict[str, str] = {}
    training: dict[str, Any] = {}
    make_alpha: np.ndarray | None = None
    make_model = None

    def record(result: EvalResult, group: str) -> None:
        groups[result.system] = group
        results.append(result)
        result.save_per_query(out_dir / "per_query" / f"{result.system}.jsonl")
        log.info("%s: recall@10 %.4f ndcg@10 %.4f (%.0f s)", result.system,
                 result.metrics["recall@10"], result.metrics["ndcg@10"], result.seconds)

    if wanted is None or "bm25" in wanted:
        record(evaluator.evaluate(BM25System()), "baseline")
    if wanted is None or "minilm-zero-shot" in wanted:
        record(evaluator.evaluate(ZeroShotMiniLMSystem()), "baseline")

    from makevl.models.checkpoint import load_checkpoint
    from makevl.models.inference import MakeEncoder
    from makevl.models.make import MakeModel
    from makevl.training.trainer import seed_everything, train

    for spec in TRAINED_SYSTEMS:
        if wanted is not None and spec.name not in wanted:
            continue
        cfg = with_overrides(base, [*spec.overrides, f"train.out_dir={out_dir / 'models' / spec.name}"])
        shutil.rmtree(cfg.train.out_dir, ignore_errors=True)  # a rerun retrains from scratch
        t0 = time.perf_counter()
        outcome = train(cfg)
        model = MakeEncoder(load_checkpoint(outcome.best_checkpoint or outcome.checkpoint)[0])
        training[spec.name] = {
            "steps": outcome.step,
            "seconds": round(time.perf_counter() - t0, 1),
            "final_loss": outcome.loss,
            "val_recall@10_untrained": outcome.initial_recall,
            "val_recall@10_best": outcome.best_recall,
            "stopped": outcome.stopped,
            "bad_samples": outcome.bad_samples,
        }
        system = EmbeddingSystem(spec.name, model.encode_queries, model.encode_products)
        record(evaluator.evaluate(system), spec.group)
        if spec.name == "make":
            make_alpha, make_model = system.modality_weights, model
            # The same model before training (same config and seed): the floor to beat.
            seed_everything(cfg.train.seed)
            num_keywords = model.model.num_keywords
            untrained = MakeEncoder(MakeModel.from_config(cfg, num_keywords=num_keywords))
            record(evaluator.evaluate(EmbeddingSystem(
                "make-untrained", untrained.encode_queries, untrained.encode_products)),
                "reference")

    if make_model is not None and (wanted is None or "static-fusion" in wanted):
        for system in static_fusion_grid(
            make_model.encode_queries,
            lambda titles: _branch(make_model, titles=titles),
            lambda products: _branch(make_model, products=products),
        ):
            record(evaluator.evaluate(system), "baseline")

    figures = {
        "preset": preset,
        "condition": "sparse titles (colour words removed)" if base.data.sparse_titles else "full titles",
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
    if make_alpha is not None:
        figures["modal_adaptation"] = _alpha_by_category(query_set.pool, make_alpha, category)
    plots = write_plots(out_dir, results, groups, query_set.pool, make_alpha, category, evaluator)
    figures["plots"] = plots
    return write_report(out_dir, figures, sparse_titles=base.data.sparse_titles)


def write_report(out_dir: Path, figures: dict[str, Any], sparse_titles: bool) -> dict[str, Any]:
    """Judge the claims and write report.json and report.md from the figures.

    A sparse-titles report is compared with the full-titles report beside it
    (``reports/<preset>/report.json``) when that one exists.
    """
    full_titles = out_dir.parent / figures["preset"] / "report.json"
    if sparse_titles and full_titles.is_file():
        figures["full_titles_report"] = str(full_titles)
        figures["drop_vs_full_titles"] = title_drop(json.loads(full_titles.read_text()), figures)
    figures["claims"] = check_claims(figures)
    (out_dir / "report.json").write_text(json.dumps(figures, indent=2, default=str))
    (out_dir / "report.md").write_text(render_markdown(figures, figures.get("plots", {})))
    return figures


def refresh_report(out_dir: str | Path) -> dict[str, Any]:
    """Re-judge and re-render a finished report, e.g. once its full-titles sibling exists."""
    out_dir = Path(out_dir)
    figures = json.loads((out_dir / "report.json").read_text())
    figures.setdefault("plots", {title: name for title, name in _PLOT_TITLES.items()
                                 if (out_dir / name).is_file()})
    return write_report(out_dir, figures, figures["config"]["data"]["sparse_titles"])


def _branch(model, titles: list[str] | None = None, products: list[Product] | None = None):
    """MAKE's unit title (or image) branch vectors for static fusion."""
    if products is None:
        products = [Product(id=str(i), title=t, image=None) for i, t in enumerate(titles)]
        return model.encode_branch(products, "title", on_error=lambda *_: None)
    return model.encode_branch(products, "image")


def _alpha_by_category(pool: list[Product], alpha: np.ndarray, attribute: str | None) -> dict:
    by_category: dict[str, list[np.ndarray]] = {}
    for product, weights in zip(pool, alpha):
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


def title_drop(full: dict[str, Any], sparse: dict[str, Any]) -> dict[str, dict[str, float]]:
    """NDCG@10 and Recall@10 lost by each system when titles lose their colour words.

    ``<metric>`` is the absolute loss, ``<metric> relative`` the share of the
    full-titles figure that was lost.
    """
    drops = {}
    for name, result in sparse["results"].items():
        if name in full["results"]:
            drops[name] = {}
            for metric in ("ndcg@10", "recall@10"):
                before = full["results"][name]["metrics"][metric]
                drops[name][metric] = before - result["metrics"][metric]
                drops[name][f"{metric} relative"] = drops[name][metric] / before if before else 0.0
    return drops


def check_claims(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's claims, each judged from the figures (never assumed)."""
    results = figures["results"]
    claims = []
    if "make" not in results:
        return claims
    make = results["make"]
    if "make-untrained" in results:
        trained, floor = make["metrics"]["recall@10"], results["make-untrained"]["metrics"]["recall@10"]
        claims.append({
            "claim": "trained MAKE reaches at least twice the Recall@10 of the untrained model",
            "holds": trained >= 2 * floor,
            "detail": f"{trained:.4f} vs untrained {floor:.4f}",
        })
    drops = figures.get("drop_vs_full_titles", {})
    text_only = [name for name in TEXT_ONLY if name in drops]
    if "make" in drops and text_only:
        for metric in ("ndcg@10", "recall@10", "ndcg@10 relative"):
            worse = [n for n in text_only if drops[n][metric] <= drops["make"][metric]]
            claims.append({
                "claim": f"with sparse titles MAKE loses less {metric} than every text-only system",
                "holds": not worse,
                "detail": ", ".join(f"{n} -{drops[n][metric]:.4f}" for n in ["make", *text_only]),
            })
    baselines = [n for n, g in figures["groups"].items() if g == "baseline"]
    for metric in ("ndcg@10", "recall@10"):
        beaten = [b for b in baselines if make["metrics"][metric] > results[b]["metrics"][metric]]
        claims.append({
            "claim": f"MAKE beats every baseline on {metric}",
            "holds": len(beaten) == len(baselines),
            "detail": "not beaten by MAKE: " + (", ".join(sorted(set(baselines) - set(beaten)))
                                                 or "none"),
        })
    for name in ("bm25", "minilm-zero-shot"):
        if name in results:
            for metric in ("ndcg@10", "recall@10"):
                low = make["ci"][metric][0]
                high = results[name]["ci"][metric][1]
                claims.append({
                    "claim": f"MAKE's 95% interval on {metric} is above {name}'s",
                    "holds": low > high,
                    "detail": f"MAKE lower bound {low:.4f} vs {name} upper bound {high:.4f}",
                })
    return claims


def _fmt(result: dict[str, Any], metric: str) -> str:
    low, high = result["ci"][metric]
    return f"{result['metrics'][metric]:.4f} [{low:.3f}, {high:.3f}]"


def render_markdown(figures: dict[str, Any], plots: dict[str, str]) -> str:
    results, groups = figures["results"], figures["groups"]
    lines = [
        f"# makevl report: {figures['preset']} ({figures['condition']})",
        "",
        f"- command: `{figures['command']}`",
        f"- machine: {figures['machine']}",
        f"- run time: {figures['seconds'] / 60:.1f} minutes",
        (
            f"- test split: {figures['test_queries']} queries over {figures['test_products']} "
            "products (product-level split; exact search; 95% bootstrap intervals over queries)"
        ),
        "",
        "## Systems",
        "",
        "| system | group | Recall@1 | Recall@10 | Recall@50 | NDCG@10 | MRR@10 | MAP@100 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    order = sorted(results, key=lambda n: -results[n]["metrics"]["ndcg@10"])
    for name in order:
        m = results[name]["metrics"]
        lines.append(
            f"| {name} | {groups[name]} | {m['recall@1']:.4f} | {_fmt(results[name], 'recall@10')} "
            f"| {m['recall@50']:.4f} | {_fmt(results[name], 'ndcg@10')} | {m['mrr@10']:.4f} "
            f"| {m['map@100']:.4f} |"
        )
    if "make" in results and any(groups.get(n) == "ablation" for n in results):
        lines += ["", "## Ablations (change against full MAKE)", "",
                  "| ablation | what is removed | NDCG@10 | change | Recall@10 | change |",
                  "| --- | --- | --- | --- | --- | --- |"]
        base = results["make"]["metrics"]
        for spec in TRAINED_SYSTEMS:
            if spec.group == "ablation" and spec.name in results:
                m = results[spec.name]["metrics"]
                lines.append(
                    f"| {spec.name} | {spec.description} | {m['ndcg@10']:.4f} | "
                    f"{m['ndcg@10'] - base['ndcg@10']:+.4f} | {m['recall@10']:.4f} | "
                    f"{m['recall@10'] - base['recall@10']:+.4f} |"
                )
    if figures.get("drop_vs_full_titles"):
        lines += ["", f"## Lost against full titles ({figures['full_titles_report']})", "",
                  "| system | NDCG@10 lost | share lost | Recall@10 lost | share lost |",
                  "| --- | --- | --- | --- | --- |"]
        drops = figures["drop_vs_full_titles"]
        for name in sorted(drops, key=lambda n: drops[n]["ndcg@10"]):
            d = drops[name]
            lines.append(f"| {name} | {d['ndcg@10']:.4f} | {d['ndcg@10 relative']:.1%} | "
                         f"{d['recall@10']:.4f} | {d['recall@10 relative']:.1%} |")
    if figures.get("claims"):
        lines += ["", "## Claims, checked against the figures", ""]
        for claim in figures["claims"]:
            mark = "holds" if claim["holds"] else "DOES NOT HOLD"
            lines.append(f"- {claim['claim']}: **{mark}** ({claim['detail']})")
    if figures.get("modal_adaptation"):
        lines += ["", "## Modal Adaptation weights of MAKE per category (test products)", "",
                  "| category | products | title | image | fused |", "| --- | --- | --- | --- | --- |"]
        for name, row in list(figures["modal_adaptation"].items())[:15]:
            lines.append(f"| {name} | {row['products']} | {row['title']:.3f} | {row['image']:.3f} "
                         f"| {row['fused']:.3f} |")
    if figures.get("training"):
        lines += [
            "", "## Training", "",
            "| system | steps | minutes | final loss | val R@10 untrained | val R@10 best | stopped |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, t in figures["training"].items():
            loss = f"{t['final_loss']:.4f}" if t["final_loss"] is not None else "-"
            lines.append(f"| {name} | {t['steps']} | {t['seconds'] / 60:.1f} | {loss} | "
                         f"{_maybe(t['val_recall@10_untrained'])} | {_maybe(t['val_recall@10_best'])} "
                         f"| {t['stopped']} |")
    category_rows = _category_table(results, order)
    if category_rows:
        lines += ["", "## NDCG@10 per category", "", *category_rows]
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({path})" for title, path in plots.items()]
    return "\n".join(lines) + "\n"


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _category_table(results: dict[str, Any], order: list[str]) -> list[str]:
    shown = [n for n in order if results[n].get("per_category")][:5]
    if not shown:
        return []
    categories = list(results[shown[0]]["per_category"])[:12]
    rows = ["| category | queries | " + " | ".join(shown) + " |",
            "| --- | --- | " + " | ".join("---" for _ in shown) + " |"]
    for c in categories:
        n = results[shown[0]]["per_category"][c]["queries"]
        cells = [f"{results[s]['per_category'].get(c, {}).get('ndcg@10', float('nan')):.3f}"
                 for s in shown]
        rows.append(f"| {c} | {n} | " + " | ".join(cells) + " |")
    return rows


def write_plots(
    out_dir: Path,
    results: list[EvalResult],
    groups: dict[str, str],
    pool: list[Product],
    alpha: np.ndarray | None,
    category: str | None,
    evaluator: RetrievalEvaluator,
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, str] = {}
    ks = [k for k in evaluator.ks]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for result in sorted(results, key=lambda r: -r.metrics["ndcg@10"]):
        ax.plot(ks, [result.metrics[f"recall@{k}"] for k in ks], marker="o", label=result.system)
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_ylabel("Recall@K")
    ax.set_title("Recall@K on the test split")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "recall_at_k.png", dpi=110)
    plt.close(fig)
    plots["Recall@K per system"] = "recall_at_k.png"

    if alpha is not None:
        image_weight: dict[str, list[float]] = {}
        for product, weights in zip(pool, alpha):
            name = product.attributes.get(category or "", "all")
            image_weight.setdefault(name, []).append(weights[1])
        names = sorted(image_weight, key=lambda n: -len(image_weight[n]))[:15]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.boxplot([image_weight[n] for n in names], showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("image weight (Modal Adaptation)")
        ax.set_title("How much the photo counts, per category (MAKE, test products)")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(out_dir / "ma_image_weight.png", dpi=110)
        plt.close(fig)
        plots["Modal Adaptation image weight per category"] = "ma_image_weight.png"

    by_name = {r.system: r for r in results}
    baselines = [r for r in results if groups.get(r.system) == "baseline"]
    if "make" in by_name and baselines:
        best = max(baselines, key=lambda r: r.metrics["ndcg@10"])
        path = _example_grid(out_dir, by_name["make"], best, pool, evaluator)
        if path:
            plots[f"Top-5 of MAKE and of the best baseline ({best.system})"] = path
    return plots


def _example_grid(out_dir: Path, make: EvalResult, best: EvalResult, pool: list[Product],
                  evaluator: RetrievalEvaluator, n_queries: int = 4) -> str | None:
    import matplotlib.pyplot as plt

    from makevl.data.images import ImageError, load_image

    products = {p.id: p for p in pool}
    best_rows = {row["qid"]: row for row in best.per_query}
    # Queries where the two systems differ most, then a deterministic pick.
    rows = sorted(make.per_query, key=lambda r: (
        -(r["metrics"]["ndcg@10"] - best_rows[r["qid"]]["metrics"]["ndcg@10"]), r["qid"]))
    chosen = rows[: n_queries // 2] + rows[-(n_queries - n_queries // 2):]
    if not chosen:
        return None
    fig, axes = plt.subplots(2 * len(chosen), 5, figsize=(12, 2.6 * 2 * len(chosen)))
    for i, row in enumerate(chosen):
        relevant = evaluator.qrels[row["qid"]]
        for j, (result_row, label) in enumerate(
            [(row, "MAKE"), (best_rows[row["qid"]], best.system)]
        ):
            for col in range(5):
                ax = axes[2 * i + j, col]
                ax.set_xticks([])
                ax.set_yticks([])
                top = result_row["top10"]
                if col >= len(top):
                    ax.axis("off")
                    continue
                product = products[top[col]]
                try:
                    ax.imshow(load_image(product.image))
                except ImageError:
                    pass
                hit = product.id in relevant
                for spine in ax.spines.values():
                    spine.set_edgecolor("green" if hit else "red")
                    spine.set_linewidth(3)
                ax.set_title(product.title[:38], fontsize=6)
                if col == 0:
                    ax.set_ylabel(f"{label}\n'{row['query']}'", fontsize=7)
    fig.suptitle("Top-5 per query (green: relevant, red: not)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / "examples.png", dpi=90)
    plt.close(fig)
    return "examples.png"
