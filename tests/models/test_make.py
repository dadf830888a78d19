"""The model maps tensors to unit vectors and Modal Adaptation weights."""

import pytest
import torch
import torch.nn.functional as F

from makevl.config import LossConfig, ModelConfig, RunConfig
from makevl.models.make import MakeModel
from makevl.models.objective import MakeObjective
from models.tiny import colour_swatches, make_batch, product_inputs, tiny_model


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


@pytest.mark.parametrize("shared", [False, True])
def test_frozen_word_embeddings_stay_as_pretrained_while_the_model_learns(shared):
    model = tiny_model(freeze_word_embeddings=True, shared_query_title_encoder=shared).train()
    towers = {model.query_encoder, model.title_encoder}
    words = [tower.model.get_input_embeddings().weight for tower in towers]
    before = [w.detach().clone() for w in words]
    layer = model.query_encoder.model.encoder.layer[0].attention.self.query.weight
    layer_before = layer.detach().clone()
    objective = MakeObjective(model, LossConfig())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = make_batch(model)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = objective(batch)["loss"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1  # it still learns
    assert all(w.grad is None for w in words)
    assert all(torch.equal(w, b) for w, b in zip(words, before, strict=True))
    assert not torch.equal(layer, layer_before)  # the layers above them train


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


def _fused_colour_accuracy(colour_levels: int) -> float:
    """Train only the fusion encoder and a linear head to tell the swatches' colours apart."""
    torch.manual_seed(0)
    model = MakeModel(ModelConfig(embed_dim=32, fusion_layers=1, fusion_heads=2,
                                  image_colour_levels=colour_levels), image_size=64).eval()
    tower = model.image_encoder
    mean, std = torch.tensor(tower.mean).view(1, 3, 1, 1), torch.tensor(tower.std).view(1, 3, 1, 1)
    (train_x, train_y), (test_x, test_y) = colour_swatches(6, seed=1), colour_swatches(4, seed=2)
    with torch.no_grad():
        train, test = tower((train_x - mean) / std), tower((test_x - mean) / std)

    def fused(image: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        title = torch.zeros(len(image[0]), 2, model.title_encoder.hidden_size)  # titles say nothing
        return model.fusion(title, torch.ones(len(title), 2), *image)

    head = torch.nn.Linear(model.embed_dim, 8)
    optimizer = torch.optim.Adam([*model.fusion.parameters(), *head.parameters()], lr=3e-3)
    for _ in range(100):
        loss = torch.nn.functional.cross_entropy(head(fused(train)), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return head(fused(test)).argmax(1).eq(test_y).float().mean().item()


def test_the_fused_vector_learns_colour_from_the_pooled_image_token():
    """Colour histograms reach the fusion encoder as one more image token."""
    without, with_colour = _fused_colour_accuracy(0), _fused_colour_accuracy(3)
    assert with_colour >= 0.9 and with_colour > without + 0.15, (without, with_colour)


def test_the_pooled_image_token_exists_only_when_the_pooled_vector_adds_to_the_tokens():
    assert MakeModel(ModelConfig(embed_dim=32, fusion_layers=1, fusion_heads=2),
                     image_size=32).fusion.pooled_image_in is None
    model = MakeModel(ModelConfig(embed_dim=32, fusion_layers=1, fusion_heads=2,
                                  image_colour_levels=2), image_size=32)
    assert model.fusion.pooled_image_in.in_features == model.image_encoder.pooled_features


def test_the_gate_temperature_softens_ma_weights_in_eval_mode_only():
    model = tiny_model()
    inputs = product_inputs(make_batch(model))

    def weights_and_logits(training: bool):
        model.train(training)
        with torch.no_grad():
            out = model.encode_product(**inputs)
            stacked = torch.stack([out[b] for b in ("title", "image", "fused")], dim=1)
            return out["modality_weights"], model.gate(stacked.flatten(1))

    sharp, _ = weights_and_logits(False)
    model.gate_temperature.fill_(4.0)
    soft, logits = weights_and_logits(False)
    torch.testing.assert_close(soft, (logits / 4.0).softmax(-1))
    spread = lambda w: (w.max(-1).values - w.min(-1).values).mean()
    assert spread(soft) < spread(sharp)
    trained, logits = weights_and_logits(True)  # the gate learns at temperature 1
    torch.testing.assert_close(trained, logits.softmax(-1))


def test_normalize_blocks_standardises_each_block_on_its_own():
    from makevl.models.make import normalize_blocks

    pooled = torch.cat([torch.randn(4, 6) * 50 + 3, torch.randn(4, 3) * 0.5], dim=1)
    out = normalize_blocks(pooled, [6, 3])
    for block in out.split([6, 3], dim=1):
        torch.testing.assert_close(block.mean(-1), torch.zeros(4), atol=1e-5, rtol=0)
        torch.testing.assert_close(block.var(-1, unbiased=False), torch.ones(4), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match=r"widths \[6, 4\].*vector of 9"):
        normalize_blocks(pooled, [6, 4])


def _image_branch_accuracy(block_norm: bool) -> float:
    """Train the image branch's projection with Adam on cached pooled vectors whose class
    is told only by the small colour block; held-out nearest-class accuracy."""
    torch.manual_seed(0)
    model = tiny_model(product_branch="image", image_colour_levels=2, image_block_norm=block_norm)
    cnn, colour = model.image_encoder.pooled_blocks()
    classes, n = colour, 64

    def pooled(labels: torch.Tensor) -> torch.Tensor:  # big noise block, tiny informative one
        return torch.cat([torch.randn(len(labels), cnn) * 3 + 1, 0.1 * F.one_hot(labels, colour)], 1)

    def image_vectors(features: torch.Tensor) -> torch.Tensor:
        tokens = torch.zeros(len(features), 1, cnn)
        return model.encode_product(None, None, image_tokens=tokens, image_pooled=features,
                                    branches=("image",))["image"]  # fmt: skip

    targets = F.normalize(torch.randn(classes, model.embed_dim), dim=-1)
    optimizer = torch.optim.Adam(model.image_proj.parameters(), lr=1e-3)
    for _ in range(100):
        labels = torch.randint(classes, (n,))
        loss = F.cross_entropy(image_vectors(pooled(labels)) @ targets.T / 0.05, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    labels = torch.arange(classes).repeat(8)
    with torch.no_grad():
        guess = (image_vectors(pooled(labels)) @ targets.T).argmax(-1)
    return (guess == labels).float().mean().item()


def test_block_norm_lets_a_small_colour_block_steer_the_image_branch():
    plain, normalised = _image_branch_accuracy(False), _image_branch_accuracy(True)
    # measured: about 0.1 plain (chance: 1/17), about 0.9 normalised
    assert normalised > max(plain + 0.3, 0.5), (plain, normalised)
