import csv
import json

import pytest

from makevl.cli import main
from makevl.config import bundled_config, with_overrides
from makevl.evaluation.systems import SYSTEMS, SystemSpec, get_system, register_system


def test_unknown_system_lists_the_registered_ones():
    with pytest.raises(ValueError, match="bm25, minilm-zero-shot, checkpoint"):
        get_system("bm52")


def test_a_spec_either_builds_or_is_trained():
    with pytest.raises(ValueError, match="exactly one"):
        register_system(SystemSpec("neither", "baseline", "no way to get it"))
    with pytest.raises(ValueError, match="already registered"):
        register_system(SystemSpec("bm25", "baseline", "twice", build=lambda model: []))


def test_report_variants_and_their_overrides():
    trained = [name for name, spec in SYSTEMS.items() if spec.trained]
    assert trained == ["make", "make-no-ma-equal", "make-no-ma-fused", "make-no-ke",
                       "make-with-ke", "make-shared-encoder", "make-no-query-robustness",
                       "make-no-block-norm", "clip-query-image", "text-bi-encoder"]
    assert "model.product_branch=image" in SYSTEMS["clip-query-image"].train_overrides
    assert not SYSTEMS["checkpoint"].in_report


def test_with_ke_undoes_no_ke():
    """On a config without KE, make-with-ke trains the default KE that make-no-ke takes away."""
    default = bundled_config("demo-tiny")
    without = with_overrides(default, list(SYSTEMS["make-no-ke"].train_overrides))
    assert not without.model.keyword_enhancement
    restored = with_overrides(without, list(SYSTEMS["make-with-ke"].train_overrides))
    assert restored.model_dump() == default.model_dump()


def test_no_block_norm_undoes_fashion_minis_default():
    """fashion-mini normalises the image parts; the ablation trains the same config without."""
    default = bundled_config("fashion-mini")
    assert default.model.image_block_norm
    without = with_overrides(default, list(SYSTEMS["make-no-block-norm"].train_overrides))
    assert not without.model.image_block_norm
    assert without.model.model_copy(update={"image_block_norm": True}) == default.model


class FirstProducts:
    """A toy system: every query gets the pool in catalog order."""

    name = "first-products"

    def rank(self, queries, pool, k):
        return [[p.id for p in pool[:k]] for _ in queries]


def test_a_registered_system_is_picked_up_by_eval(tmp_path, capsys, monkeypatch):
    with (tmp_path / "catalog.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "title"])
        writer.writerows([[f"p{i}", f"product {i}"] for i in range(30)])
    with (tmp_path / "queries.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["query", "product_id"], *[["thing", f"p{i}"] for i in range(30)]])
    monkeypatch.setitem(SYSTEMS, "first-products", SystemSpec(
        "first-products", "baseline", "toy", build=lambda model: [FirstProducts()]))
    code = main(["eval", "--system", "first-products", "--preset", "custom", "--split", "train",
                 "--json", "--bootstrap", "10", f"data.catalog={tmp_path / 'catalog.csv'}",
                 f"data.queries={tmp_path / 'queries.csv'}"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["system"] == "first-products" and payload["n_queries"] == 1


def test_eval_refuses_a_system_only_the_report_trains():
    with pytest.raises(SystemExit):  # not a choice: it has no checkpoint to load
        main(["eval", "--system", "make-no-ke"])


def test_no_spelling_scores_makes_model_with_queries_as_typed():
    import numpy as np

    from makevl.models.inference import MakeEncoder
    from makevl.spelling import SpellingCorrector
    from models.tiny import tiny_model

    build = SYSTEMS["make-no-spelling"].build
    model = MakeEncoder(tiny_model().eval())
    assert build(model) == []  # no corrector: it would score MAKE again under another name
    model.model.spelling = SpellingCorrector({"running": 3, "shoe": 2})
    [system] = build(model)
    assert system.name == "make-no-spelling" and system.encode_products == model.encode_products
    typed = ["runing shoe"]
    assert not np.allclose(system.encode_queries(typed), model.encode_queries(typed))
    as_typed = MakeEncoder(model.model, correct_spelling=False).encode_queries(typed)
    np.testing.assert_array_equal(system.encode_queries(typed), as_typed)


def test_make_uncalibrated_scores_the_gate_as_trained_and_leaves_make_calibrated():
    import numpy as np

    from makevl.data.catalog import Product
    from makevl.models.inference import MakeEncoder
    from models.tiny import TITLES, tiny_model

    build = SYSTEMS["make-uncalibrated"].build
    model = MakeEncoder(tiny_model().eval())
    assert build(model) == []  # temperature 1: it would score MAKE again under another name
    products = [Product(id=f"p{i}", title=t, image=None) for i, t in enumerate(TITLES)]
    sharp = model.encode_products(products, on_error=lambda *_: None).modality_weights
    model.model.gate_temperature.fill_(4.0)
    soft = model.encode_products(products, on_error=lambda *_: None).modality_weights
    [system] = build(model)
    assert system.name == "make-uncalibrated"
    as_trained = system.encode_products(products, on_error=lambda *_: None).modality_weights
    np.testing.assert_allclose(as_trained, sharp, atol=1e-6)
    assert not np.allclose(soft, sharp, atol=1e-3)
    assert float(model.model.gate_temperature) == 4.0  # MAKE itself stays calibrated
