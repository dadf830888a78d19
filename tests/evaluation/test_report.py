import json
from pathlib import Path

import pytest

from makevl.data.demo import make_demo_shop
from makevl.evaluation.report import check_claims, run_report
from makevl.evaluation.report.run import preset_config, report_systems


def _figures(make: float, bm25: float, make_ci=(0.5, 0.7), bm25_ci=(0.2, 0.4)) -> dict:
    def result(value, ci):
        return {"metrics": {"ndcg@10": value, "recall@10": value},
                "ci": {"ndcg@10": list(ci), "recall@10": list(ci)}}

    return {"results": {"make": result(make, make_ci), "bm25": result(bm25, bm25_ci)},
            "groups": {"make": "make", "bm25": "baseline"}}


def test_claims_are_judged_from_the_figures():
    holds = check_claims(_figures(0.6, 0.3))
    assert holds and all(c["holds"] for c in holds)
    fails = check_claims(_figures(0.3, 0.6, make_ci=(0.2, 0.4), bm25_ci=(0.5, 0.7)))
    assert not any(c["holds"] for c in fails)
    overlap = check_claims(_figures(0.5, 0.45, make_ci=(0.4, 0.6), bm25_ci=(0.35, 0.55)))
    by_claim = {c["claim"]: c["holds"] for c in overlap}
    assert by_claim["MAKE beats every baseline on ndcg@10"]
    assert not by_claim["MAKE's 95% interval on ndcg@10 is above bm25's"]


@pytest.mark.slow
def test_report_on_tiny_data_writes_every_file(tmp_path: Path):
    data = tmp_path / "shop"
    make_demo_shop(data, n_products=80, seed=3)
    out = tmp_path / "report"
    figures = run_report(
        "demo",
        out,
        config="demo-tiny",
        overrides=[f"data.catalog={data / 'catalog.csv'}", f"data.queries={data / 'queries.csv'}",
                   "train.max_steps=3", "train.epochs=1", "train.augment_typo=0.2"],
        systems=["bm25", "make", "make-no-ke", "make-no-query-robustness", "text-bi-encoder",
                 "static-fusion"],
        bootstrap=20,
        command="pytest",
    )
    for name in ["report.md", "report.json", "recall_at_k.png", "ma_image_weight.png",
                 "examples.png", "per_query/make.jsonl", "per_query/bm25.jsonl"]:
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert set(saved["results"]) == {
        "bm25", "make", "make-untrained", "make-no-ke", "make-no-query-robustness",
        "text-bi-encoder",
        "static-fusion(title=0.25,image=0.75)", "static-fusion(title=0.5,image=0.5)",
        "static-fusion(title=0.75,image=0.25)",
    }
    assert saved["training"]["make"]["steps"] == 3
    assert saved["training"]["make"]["bf16"] is False  # demo-tiny trains in fp32
    assert set(saved["modal_adaptation"]) <= {"bag", "dress", "laptop", "phone", "shoes",
                                              "t-shirt", "trousers", "watch"}
    markdown = (out / "report.md").read_text()
    assert "| make-no-ke |" in markdown and "## Claims" in markdown
    assert "| system | steps | minutes | bf16 |" in markdown and "| make | 3 |" in markdown
    assert any("twice the Recall@10" in c["claim"] for c in saved["claims"])
    assert figures["results"]["make"]["n_queries"] > 0


def test_the_default_report_leaves_out_variants_that_would_train_make_again():
    demo = report_systems(preset_config("demo", "demo-tiny", []), None)
    assert "make-no-ke" in demo and "make-no-ma-equal" in demo
    assert "make-with-ke" not in demo and "make-no-query-robustness" not in demo
    assert "make-no-block-norm" not in demo
    # fashion-mini turns KE's memory and prediction off, its pseudo-queries, query
    # robustness and image block norm on: taking KE away still changes its config
    fashion = report_systems(preset_config("fashion-mini", None, []), None)
    assert "make-with-ke" in fashion and "make-no-query-robustness" in fashion
    assert "make-no-block-norm" in fashion
    assert "make-no-ke" in fashion
    assert report_systems(preset_config("demo", "demo-tiny", []), []) == demo  # none named
    with pytest.raises(ValueError, match="unknown report system 'checkpoint'"):
        report_systems(preset_config("demo", "demo-tiny", []), ["make", "checkpoint"])


def test_a_variant_that_trains_makes_own_config_is_refused_before_training(tmp_path: Path):
    # demo-tiny has no query augmentation or distillation to take away
    with pytest.raises(ValueError, match="make-no-query-robustness.*same config as 'make'"):
        run_report("demo", tmp_path / "report", config="demo-tiny",
                   systems=["make", "make-no-query-robustness"])
    assert not (tmp_path / "report").exists()


def test_sparse_title_claim_compares_losses():
    full = _figures(0.8, 0.6)
    full["results"]["text-bi-encoder"] = _figures(0.7, 0)["results"]["make"]
    sparse = _figures(0.75, 0.4)
    sparse["results"]["text-bi-encoder"] = _figures(0.5, 0)["results"]["make"]
    sparse["groups"]["text-bi-encoder"] = "baseline"
    from makevl.evaluation.report import metric_drop

    sparse["drop_vs_full_titles"] = metric_drop(full, sparse)
    assert sparse["drop_vs_full_titles"]["make"]["ndcg@10"] == pytest.approx(0.05)
    claims = {c["claim"]: c["holds"] for c in check_claims(sparse)}
    assert claims["with sparse titles MAKE loses less ndcg@10 than every text-only system"]
    sparse["results"]["make"]["metrics"]["ndcg@10"] = 0.4  # now MAKE loses 0.4, more than both
    sparse["drop_vs_full_titles"] = metric_drop(full, sparse)
    claims = {c["claim"]: c["holds"] for c in check_claims(sparse)}
    assert not claims["with sparse titles MAKE loses less ndcg@10 than every text-only system"]


def test_unseen_phrasing_report_is_compared_with_its_seen_phrasing_sibling(tmp_path: Path):
    from makevl.evaluation.report import write_report

    def figures(make: float, minilm: float, sparse: bool, unseen: bool) -> dict:
        out = _figures(make, 0.1)
        out["results"]["minilm-zero-shot"] = _figures(minilm, 0)["results"]["make"]
        out["groups"]["minilm-zero-shot"] = "baseline"
        out.update(preset="fashion-mini", command="pytest", machine="test", seconds=1.0,
                   condition="test", test_queries=1, test_products=1, training={},
                   config={"data": {"sparse_titles": sparse, "unseen_phrasing": unseen}})
        for result in out["results"].values():  # the other columns report.md shows
            value = result["metrics"]["ndcg@10"]
            result["metrics"].update({m: value for m in ("recall@1", "recall@50", "mrr@10",
                                                         "map@100")})
        return out

    for folder, make in (("fashion-mini", 0.9), ("fashion-mini-sparse-titles", 0.6)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "report.json").write_text(
            json.dumps(figures(make, 0.5, "sparse" in folder, False)))

    out = tmp_path / "fashion-mini-unseen-phrasing"
    out.mkdir()
    written = write_report(out, figures(0.85, 0.6, sparse=False, unseen=True))
    assert written["drop_vs_seen_phrasing"]["make"]["ndcg@10"] == pytest.approx(0.05)
    assert "drop_vs_full_titles" not in written
    claims = {c["claim"]: c["holds"] for c in written["claims"]}
    assert claims["with unseen phrasing MAKE loses at most 0.10 NDCG@10 against seen phrasing"]
    assert claims["with unseen phrasing MAKE beats zero-shot MiniLM by at least 0.15 NDCG@10"]
    assert "## Lost against seen phrasing" in (out / "report.md").read_text()

    both = tmp_path / "fashion-mini-sparse-titles-unseen-phrasing"
    both.mkdir()
    written = write_report(both, figures(0.4, 0.3, sparse=True, unseen=True))
    assert written["seen_phrasing_report"].endswith("fashion-mini-sparse-titles/report.json")
    assert written["drop_vs_seen_phrasing"]["make"]["ndcg@10"] == pytest.approx(0.2)
    claims = {c["claim"]: c["holds"] for c in written["claims"]}
    assert not claims["with unseen phrasing MAKE loses at most 0.10 NDCG@10 against seen phrasing"]
    assert not claims["with unseen phrasing MAKE beats zero-shot MiniLM by at least 0.15 NDCG@10"]
