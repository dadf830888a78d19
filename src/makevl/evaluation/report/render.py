"""``report.json`` and ``report.md`` from the report's figures; re-rendering a finished report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from makevl.evaluation.report.claims import check_claims, metric_drop
from makevl.evaluation.report.plots import PLOT_FILES
from makevl.evaluation.systems import SYSTEMS


def write_report(out_dir: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """Judge the claims and write report.json and report.md from the figures.

    A harder condition is compared with the report beside it that lacks the
    change, when that one exists: sparse titles with ``reports/<preset>``
    (full titles), unseen phrasing with ``reports/<preset>`` or
    ``reports/<preset>-sparse-titles`` (seen phrasing).
    """
    data = figures["config"]["data"]
    sparse, unseen = data["sparse_titles"], data.get("unseen_phrasing", False)
    comparisons = []
    if sparse and not unseen:
        comparisons.append(("full_titles", figures["preset"]))
    if unseen:
        comparisons.append(("seen_phrasing", figures["preset"] + ("-sparse-titles" * sparse)))
    for name, folder in comparisons:
        reference = out_dir.parent / folder / "report.json"
        if reference.is_file():
            figures[f"{name}_report"] = str(reference)
            figures[f"drop_vs_{name}"] = metric_drop(json.loads(reference.read_text()), figures)
    figures["claims"] = check_claims(figures)
    (out_dir / "report.json").write_text(json.dumps(figures, indent=2, default=str))
    (out_dir / "report.md").write_text(render_markdown(figures, figures.get("plots", {})))
    return figures


def refresh_report(out_dir: str | Path) -> dict[str, Any]:
    """Re-judge and re-render a finished report, e.g. once its full-titles sibling exists."""
    out_dir = Path(out_dir)
    figures = json.loads((out_dir / "report.json").read_text())
    figures.setdefault("plots", {title: name for title, name in PLOT_FILES.items()
                                 if (out_dir / name).is_file()})
    return write_report(out_dir, figures)


def _fmt(result: dict[str, Any], metric: str) -> str:
    low, high = result["ci"][metric]
    return f"{result['metrics'][metric]:.4f} [{low:.3f}, {high:.3f}]"


def render_markdown(figures: dict[str, Any], plots: dict[str, str]) -> str:
    """``report.md``: the figures as tables, then the claims, training runs and plots."""
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
        lines += ["", "## Ablations (change against MAKE as configured)", "",
                  "| ablation | what changes | NDCG@10 | change | Recall@10 | change |",
                  "| --- | --- | --- | --- | --- | --- |"]
        base = results["make"]["metrics"]
        for spec in SYSTEMS.values():
            if spec.group == "ablation" and spec.name in results:
                m = results[spec.name]["metrics"]
                lines.append(
                    f"| {spec.name} | {spec.description} | {m['ndcg@10']:.4f} | "
                    f"{m['ndcg@10'] - base['ndcg@10']:+.4f} | {m['recall@10']:.4f} | "
                    f"{m['recall@10'] - base['recall@10']:+.4f} |"
                )
    for name in ("full_titles", "seen_phrasing"):
        drops = figures.get(f"drop_vs_{name}")
        if not drops:
            continue
        lines += ["", f"## Lost against {name.replace('_', ' ')} ({figures[f'{name}_report']})",
                  "", "| system | NDCG@10 lost | share lost | Recall@10 lost | share lost |",
                  "| --- | --- | --- | --- | --- |"]
        for system in sorted(drops, key=lambda n: drops[n]["ndcg@10"]):
            d = drops[system]
            lines.append(f"| {system} | {d['ndcg@10']:.4f} | {d['ndcg@10 relative']:.1%} | "
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
            ("| system | steps | minutes | bf16 | final loss | val R@10 untrained "
             "| val R@10 best | stopped |"),
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, t in figures["training"].items():
            loss = f"{t['final_loss']:.4f}" if t["final_loss"] is not None else "-"
            bf16 = {True: "on", False: "off"}.get(t.get("bf16"), "-")  # older reports: -
            lines.append(f"| {name} | {t['steps']} | {t['seconds'] / 60:.1f} | {bf16} | {loss} | "
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
