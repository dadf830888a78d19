"""The report's claims, each judged from the measured figures (never assumed)."""

from __future__ import annotations

from typing import Any

from makevl.evaluation.systems import TEXT_ONLY


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
