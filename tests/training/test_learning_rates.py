"""Per-parameter learning rates: the query tower's own LR and layer-wise decay."""

import pytest

from makevl.config import LossConfig, RunConfig, TrainConfig
from makevl.models.objective import MakeObjective
from makevl.training.learning_rates import parameter_lrs
from makevl.training.trainer import build_optimizer
from models.tiny import make_batch, tiny_model

NAMES = [
    "query_proj.weight",
    "query_encoder.model.embeddings.word_embeddings.weight",
    "query_encoder.model.encoder.layer.0.attention.self.query.weight",
    "query_encoder.model.encoder.layer.1.output.dense.weight",
    "title_encoder.model.embeddings.word_embeddings.weight",
    "title_encoder.model.encoder.layer.1.output.dense.weight",
    "image_encoder.model.conv_stem.weight",
]


def test_defaults_keep_one_lr_for_new_layers_and_one_for_towers():
    lrs = parameter_lrs(NAMES, TrainConfig(lr=1e-3, backbone_lr=1e-4))
    assert lrs["query_proj.weight"] == 1e-3
    assert {lrs[n] for n in NAMES[1:]} == {1e-4}


def test_query_tower_lr_and_layer_decay():
    lrs = parameter_lrs(NAMES, TrainConfig(lr=1e-3, backbone_lr=1e-4, query_backbone_lr=1e-5,
                                           layer_lr_decay=0.5))
    query = [lrs[n] for n in NAMES[1:4]]  # embeddings, layer 0, layer 1 of 2
    assert query == pytest.approx([1e-5 * 0.5**3, 1e-5 * 0.5**2, 1e-5 * 0.5])
    assert lrs[NAMES[4]] == pytest.approx(1e-4 * 0.5**3)  # the title tower decays from its own
    assert lrs[NAMES[5]] == pytest.approx(1e-4 * 0.5)
    assert lrs[NAMES[6]] == 1e-4  # no layer-wise decay in the image tower
    assert lrs["query_proj.weight"] == 1e-3


def _query_tower_change(**train_options) -> tuple[float, float]:
    """How far the query and title towers' weights move in 5 steps on one batch."""
    model = tiny_model(seed=3).train()
    cfg = RunConfig(train=TrainConfig(lr=1e-3, **train_options))
    objective = MakeObjective(model, LossConfig())
    optimizer = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = make_batch(model, seed=3)
    for _ in range(5):
        out = objective(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()

    def moved(prefix: str) -> float:
        return sum((p.detach() - before[n]).norm().item()
                   for n, p in model.named_parameters() if n.startswith(prefix))

    return moved("query_encoder.model.encoder.layer.0."), moved("title_encoder.")


def test_a_lower_query_tower_lr_keeps_the_query_tower_near_its_start():
    query_default, title_default = _query_tower_change()
    query_low, title_low = _query_tower_change(query_backbone_lr=1e-5)
    query_decay, _ = _query_tower_change(layer_lr_decay=0.1)
    assert query_low < 0.1 * query_default  # 100x lower LR: the tower barely moves
    assert query_decay < 0.3 * query_default  # layer 0 of 2 learns at 1% of the LR
    assert title_low == pytest.approx(title_default, rel=0.2)  # the title tower as before
