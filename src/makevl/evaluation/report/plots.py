"""The report's PNG plots: Recall@K, Modal Adaptation weights, example top-5 grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from makevl.data.catalog import Product
from makevl.evaluation.evaluator import EvalResult, RetrievalEvaluator

# Plot title -> file, for re-rendering a report whose plots were written earlier.
PLOT_FILES = {
    "Recall@K per system": "recall_at_k.png",
    "Modal Adaptation image weight per category": "ma_image_weight.png",
    "Top-5 of MAKE and of the best baseline": "examples.png",
}


def write_plots(
    out_dir: Path,
    results: list[EvalResult],
    groups: dict[str, str],
    pool: list[Product],
    modality_weights: np.ndarray | None,
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

    if modality_weights is not None:
        image_weight: dict[str, list[float]] = {}
        for product, weights in zip(pool, modality_weights):
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
