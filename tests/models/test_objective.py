"""The objective: one registered term per loss, weighted by the loss config."""

import random
from collections.abc import Callable

import pytest
import torch

from makevl.config import LossConfig
from makevl.data.text import add_typo
from makevl.models.inference import MakeEncoder
from makevl.models.losses import ProductMemoryBank
from makevl.models.objective import (
    LOSS_TERMS,
    LossInputs,
    MakeObjective,
    build_loss_terms,
    register_loss_term,
)
from makevl.training.augment import QueryAugmenter
from models.tiny import QUERIES, make_batch, product_inputs, tiny_model

TERMS = tuple(LossConfig.model_fields)  # every weight in the config names a term
ONLY_QUERY_PRODUCT = LossConfig(
    query_product=1, title_image=0, query_title=0, query_image=0, keyword_query=0,
    keyword_prediction=0,
)  # fmt: skip


def test_every_config_weight_has_a_registered_term():
    assert set(TERMS) == set(LOSS_TERMS)


@pytest.fixture(scope="module")
def overfit_one_batch() -> tuple[dict[str, float], dict[str, float], set[str]]:
    """Each term's value before and after 30 Adam steps on one batch."""
    model = tiny_model(seed=1).train()
    # Every term on: the default weights, and 0.25 for a term that is off by default.
    weights = {name: weight or 0.25 for name, weight in LossConfig().model_dump().items()}
    objective = MakeObjective(model, LossConfig(**weights))
    batch = make_batch(model, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(30):
        out = objective(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        first = first or {k: out[k].item() for k in TERMS}
    return first, {k: out[k].item() for k in TERMS}, set(out)


@pytest.mark.parametrize("name", TERMS)
def test_loss_term_falls_when_overfitting_one_batch(overfit_one_batch, name):
    first, last, keys = overfit_one_batch
    assert keys == {"loss", "logit_scale", *TERMS}
    assert last[name] < 0.5 * first[name], (name, first[name], last[name])


def test_only_terms_with_a_non_zero_weight_are_built():
    terms = build_loss_terms(LossConfig(title_image=0.0, keyword_query=0).model_dump())
    assert list(terms) == ["query_product", "query_title", "query_image", "keyword_prediction"]
    assert terms["query_title"] == (0.25, LOSS_TERMS["query_title"])
    assert build_loss_terms({"query_product": 0.0}) == {}


def test_an_unknown_term_name_is_an_error():
    with pytest.raises(
        ValueError, match=r"unknown loss term\(s\) \['query_colour'\].*query_product"
    ):
        build_loss_terms({"query_product": 1.0, "query_colour": 0.5})
    with pytest.raises(ValueError, match="already registered"):
        register_loss_term("query_product")(lambda inputs: None)


def test_a_registered_term_is_weighted_into_the_loss(monkeypatch):
    monkeypatch.setitem(LOSS_TERMS, "constant", lambda inputs: torch.tensor(2.0))
    model = tiny_model().eval()
    objective = MakeObjective(model, ONLY_QUERY_PRODUCT)
    objective.terms = build_loss_terms({"query_product": 1.0, "constant": 0.5})
    with torch.no_grad():
        out = objective(make_batch(model))
    torch.testing.assert_close(out["loss"], out["query_product"] + 0.5 * 2.0)


def test_zero_weight_and_missing_inputs_skip_losses():
    model = tiny_model()
    objective = MakeObjective(model, LossConfig(title_image=0.0, query_image=0.0))
    batch = make_batch(model)
    del batch["pseudo_query_input_ids"], batch["pseudo_query_attention_mask"]
    del batch["keyword_targets"]
    out = objective(batch)
    assert set(out) == {"loss", "logit_scale", "query_product", "query_title"}
    expected = 1.0 * out["query_product"] + 0.25 * out["query_title"]
    torch.testing.assert_close(out["loss"], expected)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-4)
    only_title_image = MakeObjective(
        model,
        LossConfig(
            query_product=0, query_title=0, query_image=0, keyword_query=0, keyword_prediction=0
        ),
    )
    assert set(only_title_image(batch)) == {"loss", "logit_scale", "title_image"}


def test_duplicate_products_in_a_batch_are_masked():
    model = tiny_model().eval()
    objective = MakeObjective(model, LossConfig())
    batch = make_batch(model)
    batch["pixel_values"][1] = batch["pixel_values"][0]  # rows 0 and 1: one product
    batch["title_input_ids"][1] = batch["title_input_ids"][0]
    batch["title_attention_mask"][1] = batch["title_attention_mask"][0]
    with torch.no_grad():
        distinct = objective(batch)["query_product"]
        batch["product_index"] = torch.tensor([0, 0, 2, 3, 4, 5])
        masked = objective(batch)["query_product"]
    assert masked < distinct  # the twin is no longer a (perfectly hard) negative


def test_memory_bank_adds_negatives():
    model = tiny_model().eval()
    objective = MakeObjective(model, ONLY_QUERY_PRODUCT)
    batch = make_batch(model)
    with torch.no_grad():
        base = objective(batch)["query_product"]
        products = model.encode_product(**product_inputs(batch))["product"]

    objective.memory_bank = ProductMemoryBank(16, 32)
    objective.memory_bank.push(products, batch["product_index"])  # same products: masked
    with torch.no_grad():
        same = objective(batch)["query_product"]
    torch.testing.assert_close(same, base)
    objective.memory_bank.push(products, batch["product_index"] + 100)  # twins under other ids
    with torch.no_grad():
        harder = objective(batch)["query_product"]
    assert harder > base + 0.1
    # Training steps push the batch's products; eval steps do not.
    trained = MakeObjective(tiny_model(), ONLY_QUERY_PRODUCT, memory_bank_size=8)
    trained.model.eval()
    trained(batch)
    assert len(trained.memory_bank) == 0
    trained.model.train()
    trained(batch)["loss"].backward()
    assert len(trained.memory_bank) == 6
    assert not any(k.startswith("memory_bank") for k in trained.model.state_dict())


def _query_geometry_gap(model, teacher) -> float:
    """The distillation term's value for ``model``'s queries: how far its geometry is from the teacher's."""
    from makevl.models.objective import query_distillation

    with torch.no_grad():
        inputs = LossInputs(model, make_batch(model), state={"query_distillation": teacher})
        return query_distillation(inputs).item()


def _fit(model, objective: MakeObjective, batch: dict, steps: int, lr: float,
         pseudo_queries: Callable[[int], list[str]] | None = None) -> None:
    """``steps`` Adam steps of ``objective`` on one batch, its pseudo-queries re-drawn
    each step by ``pseudo_queries(step)`` when given."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        if pseudo_queries is not None:
            _set_pseudo_queries(model, batch, pseudo_queries(step))
        out = objective(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()


def test_distillation_keeps_the_query_geometry_of_the_pretrained_tower():
    runs = {}
    for weight in (0.0, 1.0):
        model = tiny_model(seed=2).train()
        objective = MakeObjective(model, ONLY_QUERY_PRODUCT.model_copy(
            update={"query_distillation": weight}))
        assert ("query_distillation" in objective.term_state) == bool(weight)
        _fit(model, objective, make_batch(model, seed=2), steps=12, lr=3e-3)
        runs[weight] = (model.eval(), objective)
    teacher = runs[1.0][1].term_state["query_distillation"]
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.tower.training  # never switched to train mode with the objective
    without, with_term = (_query_geometry_gap(runs[w][0], teacher) for w in (0.0, 1.0))
    assert with_term < 0.5 * without, (with_term, without)


@pytest.mark.parametrize(
    ("branch", "unused_tower"), [("image", "title_encoder"), ("title", "image_encoder")]
)
def test_a_single_branch_model_trains_without_the_towers_it_never_reads(branch, unused_tower):
    model = tiny_model(seed=2, product_branch=branch).train()
    objective = MakeObjective(model, ONLY_QUERY_PRODUCT)
    assert objective.branches == ()  # no term reads a branch on its own

    def never(*args, **kwargs):
        raise AssertionError(f"{unused_tower} ran for a {branch}-only model")

    getattr(model, unused_tower).forward = never
    model.fusion.forward = never
    batch = make_batch(model, seed=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        out = objective(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0]
    # A term that reads the other branch makes the objective compute it again.
    reads_title = MakeObjective(model, LossConfig(query_title=1.0, title_image=0, query_image=0))
    assert "title" in reads_title.branches
    # One that reads a branch without saying so is told how to.
    other = "image" if branch == "title" else "title"
    inputs = LossInputs(model, batch, branches=())
    with pytest.raises(KeyError, match=rf"reads_branches=\('{other}',\)"):
        getattr(inputs, other)


def _set_pseudo_queries(model, batch: dict, texts: list[str]) -> None:
    pseudo = MakeEncoder(model).tokenize_queries(texts)
    batch["pseudo_query_input_ids"] = pseudo["input_ids"]
    batch["pseudo_query_attention_mask"] = pseudo["attention_mask"]


def _found(model, batch: dict, queries: list[str], rows: list[int]) -> int:
    """How many of ``queries`` rank their product (``rows``, in ``batch``) first."""
    with torch.no_grad():
        typed = MakeEncoder(model).tokenize_queries(queries)
        query = model.encode_query(typed["input_ids"], typed["attention_mask"])
        products = model.encode_product(**product_inputs(batch))["product"]
    return (query @ products.T).argmax(dim=1).eq(torch.tensor(rows)).sum().item()


def test_keyword_pseudo_queries_teach_words_that_no_query_uses():
    """KE's pseudo-queries (fashion-mini's default since session 10) should make a
    catalog word the query log never uses find its product, as "tee" does."""
    catalog_words = ["running", "cotton", "analog", "baseball", "ankle", "leather"]
    found = {}
    for weight in (0.0, 1.0):
        model = tiny_model(seed=3, keyword_enhancement=False).train()
        objective = MakeObjective(model, ONLY_QUERY_PRODUCT.model_copy(
            update={"keyword_query": weight}))
        batch = make_batch(model, seed=3)
        _set_pseudo_queries(model, batch, catalog_words)  # one per product
        _fit(model, objective, batch, steps=25, lr=2e-3)
        found[weight] = _found(model.eval(), batch, catalog_words, list(range(6)))
    assert not set(catalog_words) & {w for q in QUERIES for w in q.split()}
    assert found[1.0] >= 5 and found[1.0] > found[0.0], found


def _typos(word: str) -> list[str]:
    """Every one-edit typo ``add_typo`` can make of ``word``, sorted."""
    return sorted({add_typo(word, random.Random(seed)) for seed in range(300)} - {word})


def test_misspelt_pseudo_queries_teach_misspellings_never_seen_in_training():
    """train.augment_pseudo_typo: pseudo-queries typed with a typo, re-drawn each
    step, should make other typos of those catalog words find their product too."""
    catalog_words = ["running", "cotton", "analog", "baseball", "ankle", "leather"]
    held_out = [(row, typo) for row, word in enumerate(catalog_words) for typo in _typos(word)[::3]]
    never_trained = {typo for _, typo in held_out}
    augmenter = QueryAugmenter(typo=0.5)

    def misspelt(step: int) -> list[str]:
        texts = [augmenter(w, random.Random(f"{step}:{w}")) for w in catalog_words]
        return [w if t in never_trained else t for w, t in zip(catalog_words, texts)]

    found = {}
    for name, draw in (("clean", lambda step: catalog_words), ("misspelt", misspelt)):
        model = tiny_model(seed=3, keyword_enhancement=False).train()
        objective = MakeObjective(model, ONLY_QUERY_PRODUCT.model_copy(
            update={"keyword_query": 1.0}))
        batch = make_batch(model, seed=3)
        _fit(model, objective, batch, steps=40, lr=2e-3, pseudo_queries=draw)
        found[name] = _found(model.eval(), batch, [typo for _, typo in held_out],
                             [row for row, _ in held_out])
    assert found["misspelt"] > 0.7 * len(held_out) and found["misspelt"] > found["clean"], found
