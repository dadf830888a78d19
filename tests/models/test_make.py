import logging

import numpy as np
import pytest
import torch
from PIL import Image

from makevl.config import LossConfig, ModelConfig, RunConfig
from makevl.data.catalog import Product
from makevl.models.make import LOSS_NAMES, MakeModel

SIZE = 32
KEYWORDS = 6
QUERIES = ["red shoe", "blue shirt", "black watch", "green cap", "white socks", "pink bag"]
TITLES = [
    "Nike men red running shoe with mesh",
    "Roadster men blue cotton casual shirt",
    "Fossil black analog watch for women",
    "Puma unisex green baseball cap",
    "Adidas white ankle socks pack of three",
    "Lino Perros pink leather handbag",
]



def tiny_model(seed=0, num_keywords=KEYWORDS, loss=None, **model_options) -> MakeModel:
    torch.manual_seed(seed)
    options = {"embed_dim": 32, "fusion_layers": 1, "fusion_heads": 2} | model_options
    return MakeModel(
        ModelConfig(**options), loss or LossConfig(), num_keywords=num_keywords, image_size=SIZE
    )


def make_batch(model: MakeModel, product_index=None, seed=0) -> dict[str, torch.Tensor]:
    n = len(QUERIES)
    generator = torch.Generator().manual_seed(seed)
    queries = model.tokenize_queries(QUERIES)
    titles = model.tokenize_titles(TITLES)
    pseudo = model.tokenize_queries([t.split()[1] + " " + t.split()[2] for t in TITLES])
    targets = torch.zeros(n, KEYWORDS)
    targets[torch.arange(n), torch.arange(n) % KEYWORDS] = 1.0
    return {
        "query_input_ids": queries["input_ids"],
        "query_attention_mask": queries["attention_mask"],
        "title_input_ids": titles["input_ids"],
        "title_attention_mask": titles["attention_mask"],
        "pixel_values": torch.randn(n, 3, SIZE, SIZE, generator=generator),
        "product_index": torch.arange(n) if product_index is None else product_index,
        "keyword_targets": targets,
        "pseudo_query_input_ids": pseudo["input_ids"],
        "pseudo_query_attention_mask": pseudo["attention_mask"],
    }


def product_inputs(batch):
    keys = ("title_input_ids", "title_attention_mask", "pixel_values")
    return {key: batch[key] for key in keys}


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
    alpha = out["alpha"]
    assert alpha.shape == (6, 3) and (alpha > 0).all()
    torch.testing.assert_close(alpha.sum(-1), torch.ones(6))
    assert (alpha.max(0).values - alpha.min(0).values).max() > 1e-3  # per product, not global


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
        enriched, plain = with_ke._encode_query(ids, mask)
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


def test_every_loss_falls_when_overfitting_one_batch():
    model = tiny_model(seed=1).train()
    batch = make_batch(model, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = None
    for _ in range(30):
        out = model(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        first = first or {k: out[k].item() for k in LOSS_NAMES}
    last = {k: out[k].item() for k in LOSS_NAMES}
    for name in LOSS_NAMES:
        assert last[name] < 0.5 * first[name], (name, first[name], last[name])
    assert set(out) == {"loss", "logit_scale", *LOSS_NAMES}


def test_zero_weight_and_missing_inputs_skip_losses():
    model = tiny_model(loss=LossConfig(title_image=0.0, query_image=0.0))
    batch = make_batch(model)
    del batch["pseudo_query_input_ids"], batch["pseudo_query_attention_mask"]
    del batch["keyword_targets"]
    out = model(batch)
    assert set(out) == {"loss", "logit_scale", "query_product", "query_title"}
    expected = 1.0 * out["query_product"] + 0.25 * out["query_title"]
    torch.testing.assert_close(out["loss"], expected)
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-4)
    only_title_image = tiny_model(
        loss=LossConfig(
            query_product=0, query_title=0, query_image=0, keyword_query=0, keyword_prediction=0
        )
    )
    assert set(only_title_image(batch)) == {"loss", "logit_scale", "title_image"}


def test_duplicate_products_in_a_batch_are_masked():
    model = tiny_model().eval()
    batch = make_batch(model)
    batch["pixel_values"][1] = batch["pixel_values"][0]  # rows 0 and 1: one product
    batch["title_input_ids"][1] = batch["title_input_ids"][0]
    batch["title_attention_mask"][1] = batch["title_attention_mask"][0]
    with torch.no_grad():
        distinct = model(batch)["query_product"]
        batch["product_index"] = torch.tensor([0, 0, 2, 3, 4, 5])
        masked = model(batch)["query_product"]
    assert masked < distinct  # the twin is no longer a (perfectly hard) negative


def test_memory_bank_adds_negatives():
    model = tiny_model(
        loss=LossConfig(
            query_product=1,
            title_image=0,
            query_title=0,
            query_image=0,
            keyword_query=0,
            keyword_prediction=0,
        )
    )
    model.memory_bank = None
    batch = make_batch(model)
    with torch.no_grad():
        base = model.eval()(batch)["query_product"]
        products = model.encode_product(**product_inputs(batch))["product"]
    from makevl.models.losses import ProductMemoryBank

    model.memory_bank = ProductMemoryBank(16, 32)
    model.memory_bank.push(products, batch["product_index"])  # same products: masked
    with torch.no_grad():
        same = model(batch)["query_product"]
    torch.testing.assert_close(same, base)
    model.memory_bank.push(products, batch["product_index"] + 100)  # twins under other ids
    with torch.no_grad():
        harder = model(batch)["query_product"]
    assert harder > base + 0.1
    # Training steps push the batch's products; eval steps do not.
    trained = MakeModel(model.model_cfg, model.loss_cfg, KEYWORDS, SIZE, memory_bank_size=8)
    trained.eval()(batch)
    assert len(trained.memory_bank) == 0
    trained.train()(batch)["loss"].backward()
    assert len(trained.memory_bank) == 6


def test_ablation_flags():
    batch = make_batch(tiny_model())
    fixed = tiny_model(modal_adaptation=False).eval()
    with torch.no_grad():
        alpha = fixed.encode_product(**product_inputs(batch))["alpha"]
    torch.testing.assert_close(alpha, torch.full((6, 3), 1 / 3))

    for position, branch in enumerate(("title", "image", "fused")):
        single = tiny_model(product_branch=branch).eval()
        assert single.gate is None
        with torch.no_grad():
            out = single.encode_product(**product_inputs(batch))
        expected = torch.zeros(6, 3)
        expected[:, position] = 1.0
        torch.testing.assert_close(out["alpha"], expected)
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
    model(make_batch(model))["loss"].backward()
    assert all(p.grad is None for p in model.image_encoder.parameters())
    assert all(p.grad is None for p in model.title_encoder.parameters())
    assert any(p.grad is not None for p in model.query_encoder.parameters())


def test_preprocessing(model):
    long_query = " ".join(["shoe"] * 50)
    tokens = model.tokenize_queries([long_query, "red"])
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == (2, model.max_query_tokens)
    assert model.tokenize_titles([long_query])["input_ids"].shape[1] == model.max_title_tokens
    tall = Image.new("RGB", (20, 60), (0, 0, 0))
    pixels = model.image_transform(tall)
    assert pixels.shape == (3, SIZE, SIZE)
    mean = torch.tensor(model.image_encoder.mean)
    std = torch.tensor(model.image_encoder.std)
    torch.testing.assert_close(pixels[:, SIZE // 2, 0], (1 - mean) / std)  # white padding
    torch.testing.assert_close(pixels[:, SIZE // 2, SIZE // 2], (0 - mean) / std)  # the photo


def write_products(tmp_path, n=5):
    products = []
    for i in range(n):
        path = tmp_path / f"p{i}.jpg"
        Image.new("RGB", (40, 50), (40 * i, 200 - 30 * i, 90)).save(path)
        products.append(Product(f"p{i}", TITLES[i], str(path), source="catalog.csv", line=i + 2))
    return products


def test_batched_encoding_is_deterministic_and_tolerates_bad_images(model, tmp_path, caplog):
    products = write_products(tmp_path)
    (tmp_path / "x.jpg").write_text("this is not a JPEG")
    broken = Product("bad", "Broken image product", str(tmp_path / "x.jpg"), source="c.csv", line=9)
    products.insert(2, broken)
    model.train()
    failures = []
    vectors, alphas, ids = model.encode_products(
        iter(products), batch_size=4, on_error=lambda p, e: failures.append((p.id, str(e)))
    )
    assert model.training  # mode restored
    assert vectors.shape == (6, 32) and vectors.dtype == np.float32
    assert alphas.shape == (6, 3) and ids == [p.id for p in products]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(alphas.sum(1), 1.0, rtol=1e-5)
    assert [f[0] for f in failures] == ["bad"] and "x.jpg" in failures[0][1]

    again, _, _ = model.encode_products(products, batch_size=2, on_error=lambda p, e: None)
    np.testing.assert_allclose(vectors, again, atol=1e-5)
    with caplog.at_level(logging.WARNING):
        model.encode_products([broken])
    assert "bad" in caplog.text and "c.csv:9" in caplog.text

    by_branch = model.encode_products(products, on_error=lambda p, e: None, branches=True)
    assert by_branch["ids"] == ids
    np.testing.assert_allclose(by_branch["product"], vectors, atol=1e-5)
    for key in ("title", "image", "fused"):
        assert by_branch[key].shape == (6, 32)
    empty, empty_alpha, no_ids = model.encode_products([])
    assert empty.shape == (0, 32) and empty_alpha.shape == (0, 3) and no_ids == []

    queries = model.encode_queries(QUERIES, batch_size=4)
    assert queries.shape == (6, 32) and queries.dtype == np.float32
    np.testing.assert_allclose(queries, model.encode_queries(QUERIES), atol=1e-5)
    assert model.encode_queries([]).shape == (0, 32)
    model.eval()


def test_from_config():
    cfg = RunConfig.model_validate(
        {
            "data": {"image_size": 48, "max_query_tokens": 8},
            "model": {"embed_dim": 16, "fusion_heads": 2, "fusion_layers": 1},
            "train": {"memory_bank_size": 32},
        }
    )
    model = MakeModel.from_config(cfg, num_keywords=3)
    assert model.image_size == 48 and model.max_query_tokens == 8
    assert model.keyword_embeddings.shape == (3, 16) and model.memory_bank.size == 32
    with pytest.raises(ValueError, match="divisible"):
        MakeModel(ModelConfig(embed_dim=30, fusion_heads=4), LossConfig())
