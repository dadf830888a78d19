"""MA's gate temperature is fit on validation: it picks what ranks best and eval uses it."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from makevl.data.shop import QuerySet, load_shop
from makevl.evaluation.evaluator import EmbeddingSystem, RetrievalEvaluator
from makevl.models.checkpoint import load_checkpoint
from makevl.models.inference import MakeEncoder
from makevl.training.calibration import GATE_TEMPERATURES, calibrate_gate
from makevl.training.trainer import train
from models.tiny import tiny_model
from training.conftest import make_tiny_config


@pytest.fixture(scope="module")
def trained(demo300, tmp_path_factory):
    """A tiny MAKE trained 2 epochs on the demo shop, calibrated at each validation."""
    out = tmp_path_factory.mktemp("calibrated") / "run"
    cfg = make_tiny_config(demo300, out, "train.batch_size=32", "train.epochs=2",
                           "train.lr=2e-3", "train.warmup_steps=5")  # fmt: skip
    train(cfg)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    chosen = [m["gate_temperature"] for m in metrics if "gate_temperature" in m]
    return load_checkpoint(out / "last")[0], load_shop(cfg.data).query_set("val"), chosen


def ndcg(model, query_set: QuerySet) -> float:
    encoder = MakeEncoder(model)
    system = EmbeddingSystem("make", encoder.encode_queries, encoder.encode_products)
    return RetrievalEvaluator(query_set, bootstrap=10).evaluate(system).metrics["ndcg@10"]


def test_training_saves_the_temperature_its_last_validation_chose(trained):
    model, _, chosen = trained
    assert len(chosen) == 3  # the untrained model's validation, then one per epoch
    assert float(model.gate_temperature) == chosen[-1] and chosen[-1] in GATE_TEMPERATURES


def test_the_chosen_temperature_is_what_eval_mode_ranks_with(trained):
    model, val, _ = trained
    result = calibrate_gate(model, val)
    assert float(model.gate_temperature) == result.temperature
    assert result.ndcg[result.temperature] == max(result.ndcg.values())
    assert ndcg(model, val) == pytest.approx(result.ndcg[result.temperature], abs=1e-6)


def test_an_overconfident_gate_on_a_useless_branch_is_softened(trained):
    model, val = copy.deepcopy(trained[0]), trained[1]
    with torch.no_grad():  # the gate trusts the fused branch, now noise, almost alone
        noise = torch.Generator().manual_seed(0)
        torch.nn.init.normal_(model.fused_proj.weight, std=1.0, generator=noise)
        model.gate[-1].weight.zero_()
        model.gate[-1].bias.copy_(torch.tensor([0.0, 0.0, 12.0]))
    model.gate_temperature.fill_(1.0)
    as_trained = ndcg(model, val)
    result = calibrate_gate(model, val)
    assert result.temperature == max(GATE_TEMPERATURES)
    # measured: 0.127 as trained, 0.771 at temperature 8
    assert ndcg(model, val) > as_trained + 0.1, (as_trained, result.ndcg)


def test_calibration_off_keeps_temperature_1(demo40, tmp_path, tiny_config):
    train(tiny_config(demo40, tmp_path / "run", "train.max_steps=6", "train.calibrate_gate=false"))
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert "val_recall@10" in metrics and "gate_temperature" not in metrics  # never fit
    assert float(load_checkpoint(tmp_path / "run" / "last")[0].gate_temperature) == 1.0


def test_a_model_without_gate_or_a_split_without_queries_is_refused(trained):
    _, val, _ = trained
    with pytest.raises(ValueError, match="no Modal Adaptation gate"):
        calibrate_gate(tiny_model(modal_adaptation=False), val)
    with pytest.raises(ValueError, match="no queries"):
        calibrate_gate(tiny_model(), QuerySet({}, {}, val.pool))
