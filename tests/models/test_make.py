"""The model maps tensors to unit vectors and Modal Adaptation weights."""

import pytest
import torch

from makevl.config import LossConfig, ModelConfig, RunConfig
from makevl.models.make import MakeModel
from makevl.models.objective import MakeObjective
from models.tiny import make_batch, product_inputs, tiny_model


@pytest.fixture(scope="module")
def model() -> MakeModel:
    return tiny_model().eval()


def test_shapes_unit_norm_and_modal_adaptation_weights(model):
    batch = make_batch(model)
    with torch.no_grad():
        out = model.encode_product(**product_inputs(batch))
        q = model.encode_query(batch["query_input_ids"], batch["query_attention_mask"])
    assert q.shape == (6, 32)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(6))
    for key in ("product", "title", "image", "fused"):
        assert out[key].shape == (6, 32)
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(6))
    weights = out["modality_weights"]
    assert weights.shape == (6, 3) and (weights > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    assert (weights.max(0).values - weights.min(0).values).max() > 1e-3  # per product, not global


def test_cached_tower_outputs_give_the_same_product_vectors(model):
    batch = make_batch(model)
    with torch.no_grad():
        raw = model.encode_product(**product_inputs(batch))
        image_tokens, image_pooled = model.encode_image(batch["pixel_values"])
        title_tokens, title_pooled = model.encode_title(
            batch["title_input_ids"], batch["title_attention_mask"]
        )
        cached = model.encode_product(
            None,
            batch["title_attention_mask"],
            image_tokens=image_tokens,
            image_pooled=image_pooled,
            title_tokens=title_tokens,
            title_pooled=title_pooled,
        )
    for key in raw:
        torch.testing.assert_close(raw[key], cached[key])
    with pytest.raises(ValueError, match="pixel_values"):
        model.encode_product(batch["title_input_ids"], batch["title_attention_mask"])


def test_product_side_never_depends_on_the_query_side():
    model = tiny_model().eval()
    batch = make_batch(model)
    with torch.no_grad():
        before = model.encode_product(**product_inputs(batch))["product"]
        q_before = model.encode_query(batch["query_input_ids"], batch["query_attention_mask"])
        for name, parameter in model.named_parameters():
            if name.startswith(("query_encoder.", "query_proj.", "keyword_")):
                parameter.add_(torch.randn_like(parameter))
        after = model.encode_product(**product_inputs(batch))["product"]
        q_after = model.encode_query(batch["query_input_ids"], batch["query_attention_mask"])
    torch.testing.assert_close(before, after)
    assert not torch.allclose(q_before, q_after)


def test_keyword_memory_changes_the_query_vector():
    with_ke = tiny_model(seed=0).eval()
    without_ke = tiny_model(seed=0, keyword_enhancement=False).eval()
    no_keywords = tiny_model(seed=0, num_keywords=0).eval()
    batch = make_batch(with_ke)
    ids, mask = batch["query_input_ids"], batch["query_attention_mask"]
    with torch.no_grad():
        enriched, plain = with_ke.encode_query_pair(ids, mask)
        assert not hasattr(without_ke, "keyword_embeddings")
        # Same seed, same construction order: the query towers are identical.
        without_ke.load_state_dict(
            {k: v for k, v in with_ke.state_dict().items() if not k.startswith("keyword_")}
        )
        torch.testing.assert_close(without_ke.encode_query(ids, mask), plain)
        assert (enriched - plain).norm(dim=-1).min() > 1e-3
        torch.nn.init.zeros_(with_ke.keyword_out.weight)
        torch.nn.init.zeros_(with_ke.keyword_out.bias)
        torch.testing.assert_close(with_ke.encode_query(ids, mask), plain)
    assert not no_keywords.keyword_enhanced


def test_ablation_flags():
    batch = make_batch(tiny_model())
    fixed = tiny_model(modal_adaptation=False).eval()
    with torch.no_grad():
        weights = fixed.encode_product(**product_inputs(batch))["modality_weights"]
    torch.testing.assert_close(weights, torch.full((6, 3), 1 / 3))

    for position, branch in enumerate(("title", "image", "fused")):
        single = tiny_model(product_branch=branch).eval()
        assert single.gate is None
        with torch.no_grad():
            out = single.encode_product(**product_inputs(batch))
        expected = torch.zeros(6, 3)
        expected[:, position] = 1.0
        torch.testing.assert_close(out["modality_weights"], expected)
        torch.testing.assert_close(out["product"], out[branch])

    shared = tiny_model(shared_query_title_encoder=True)
    assert shared.query_encoder is shared.title_encoder
    separate = tiny_model()
    assert separate.query_encoder is not separate.title_encoder
    own = dict(separate.query_encoder.named_parameters())
    other = dict(separate.title_encoder.named_parameters())
    key = "model.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(own[key], other[key])
    assert sum(p.numel() for p in shared.parameters()) < sum(
        p.numel() for p in separate.parameters()
    )


def test_frozen_towers_get_no_gradient_and_stay_in_eval_mode():
    model = tiny_model(freeze_image=True, freeze_text=True).train()
    assert not model.image_encoder.training and not model.title_encoder.training
    assert model.query_encoder.training and model.fusion.training
    MakeObjective(model, LossConfig())(make_batch(model))["loss"].backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is None for p in model.title_encoder.parameters())
    assert any(p.grad is not None for p in model.query_encoder.parameters())


def test_from_config():
    cfg = RunConfig.model_validate(
        {
            "data": {"image_size": 48, "max_query_tokens": 8},
            "model": {"embed_dim": 16, "fusion_heads": 2, "fusion_layers": 1},
        }
    )
    model = MakeModel.from_config(cfg, num_keywords=3)
    assert model.image_size == 48 and model.max_query_tokens == 8
    assert model.keyword_embeddings.shape == (3, 16)
    with pytest.raises(ValueError, match="divisible"):
        MakeModel(ModelConfig(embed_dim=30, fusion_heads=4))
