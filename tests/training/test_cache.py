"""A frozen tower is run once per product; later epochs and runs read its cached features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from makevl.data.images import load_image
from makevl.data.shop import load_shop
from makevl.models.backbones import ImageTower, TextTower, create_image_tower
from makevl.models.inference import MakeEncoder
from makevl.models.make import MakeModel
from makevl.models.objective import MakeObjective
from makevl.training.cache import cache_image_features, cache_title_features, image_key
from makevl.training.trainer import train


@pytest.fixture
def count_rows(monkeypatch):
    """Patch a tower class so every forward adds its batch size to a counter."""

    def install(cls):
        counter = {"rows": 0, "calls": 0}
        original = cls.forward

        def counting(self, first, *args, **kwargs):
            counter["rows"] += first.shape[0]
            counter["calls"] += 1
            return original(self, first, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", counting)
        return counter

    return install


def test_image_cache_is_reused_and_gives_the_same_features(demo40, tmp_path, tiny_config,
                                                           count_rows):  # fmt: skip
    cfg = tiny_config(demo40, tmp_path / "run")
    products = load_shop(cfg.data).products_in("train")
    torch.manual_seed(0)
    encoder = create_image_tower("tiny").eval()
    make = MakeEncoder(MakeModel.from_config(cfg))
    settings = ("image", "tiny", 32)
    counter = count_rows(ImageTower)

    first, bad, encoded = cache_image_features(
        encoder, make.image_transform, products, tmp_path / "cache", settings, torch.device("cpu")
    )
    assert encoded == len(products) and not bad
    assert counter["rows"] == len(products)
    again, _, encoded_again = cache_image_features(  # a later run: a fresh cache object
        encoder, make.image_transform, products, tmp_path / "cache", settings, torch.device("cpu")
    )
    assert encoded_again == 0 and counter["rows"] == len(products)  # no more encoder work
    for row in (0, len(products) - 1):
        a, b = first(row), again(row)
        assert torch.equal(a["image_tokens"], b["image_tokens"])
        pixels = make.image_transform(load_image(products[row].image)).unsqueeze(0)
        with torch.no_grad():
            tokens, pooled = encoder(pixels)
        torch.testing.assert_close(a["image_tokens"], tokens[0], rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(a["image_pooled"], pooled[0], rtol=1e-2, atol=1e-2)

    # Other weights or another image size: another cache, never stale features.
    _, _, encoded_other = cache_image_features(
        encoder, make.image_transform, products, tmp_path / "cache", ("image", "tiny", 48),
        torch.device("cpu"),
    )  # fmt: skip
    assert encoded_other == len(products)
    # An edited image gets a new key, so it is encoded again.
    key = image_key(products[0])
    Path(products[0].image).touch()
    assert image_key(products[0]) != key


def test_title_cache_pads_to_max_tokens(demo40, tmp_path, tiny_config, count_rows):
    cfg = tiny_config(demo40, tmp_path / "run")
    products = load_shop(cfg.data).products_in("train")
    model = MakeModel.from_config(cfg)
    encoder = MakeEncoder(model)
    counter = count_rows(TextTower)
    args = (model.title_encoder, encoder.tokenize_titles, products, tmp_path / "cache",
            ("title", "tiny", 16), 16, torch.device("cpu"))  # fmt: skip
    lookup, encoded = cache_title_features(*args)
    assert encoded == len({p.title for p in products}) == counter["rows"]
    _, encoded_again = cache_title_features(*args)
    assert encoded_again == 0 and counter["rows"] == encoded
    features = lookup(3)
    assert features["title_tokens"].shape == (16, model.title_encoder.hidden_size)
    tokens = encoder.tokenize_titles([products[3].title])
    with torch.no_grad():
        _, pooled = model.title_encoder(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(features["title_pooled"], pooled[0], rtol=1e-2, atol=1e-2)
    assert features["title_attention_mask"].sum() == tokens["attention_mask"].sum()


def test_training_with_frozen_towers_reads_the_cache(demo40, tmp_path, tiny_config, count_rows,
                                                     monkeypatch):  # fmt: skip
    monkeypatch.setenv("MAKEVL_CACHE_DIR", str(tmp_path / "cache"))
    batch_keys: list[set[str]] = []
    original_forward = MakeObjective.forward

    def spy(self, batch):
        batch_keys.append(set(batch))
        return original_forward(self, batch)

    monkeypatch.setattr(MakeObjective, "forward", spy)
    counter = count_rows(ImageTower)
    settings = ("model.freeze_image=true", "model.freeze_text=true", "train.epochs=2")
    first = train(tiny_config(demo40, tmp_path / "first", *settings))
    first_rows = counter["rows"]
    counter["rows"] = 0
    second = train(tiny_config(demo40, tmp_path / "second", *settings))

    shop = load_shop(tiny_config(demo40, tmp_path / "x").data)
    val_rows = len(shop.products_in("val")) * 3  # validations: untrained, epoch 1, epoch 2
    assert first_rows == len(shop.products_in("train")) + val_rows  # each image once
    assert counter["rows"] == val_rows  # the second run only encodes for validation
    assert all({"image_tokens", "title_tokens"} <= keys for keys in batch_keys)
    assert not any({"pixel_values", "title_input_ids"} & keys for keys in batch_keys)
    assert first.step == second.step == 12
    assert first.loss == pytest.approx(second.loss, abs=1e-6)


def test_image_cache_survives_moving_the_shop(demo_copy, tmp_path, tiny_config, count_rows):
    """Keys hold paths relative to the catalog: the same shop by another path is not re-encoded."""
    torch.manual_seed(0)
    encoder = create_image_tower("tiny").eval()
    counter = count_rows(ImageTower)

    def cache(catalog: Path):
        cfg = tiny_config(catalog, tmp_path / "run")
        products = load_shop(cfg.data).products_in("train")
        transform = MakeEncoder(MakeModel.from_config(cfg)).image_transform
        settings = ("image", "tiny", 32)
        cpu = torch.device("cpu")
        return products, cache_image_features(
            encoder, transform, products, tmp_path / "cache", settings, cpu
        )

    products, (_, _, encoded) = cache(demo_copy)
    assert encoded == len(products) == counter["rows"]
    moved = tmp_path / "mounted" / "elsewhere"
    moved.parent.mkdir()
    demo_copy.parent.rename(moved)  # a moved checkout: same files, same mtimes
    moved_products, (_, _, encoded_again) = cache(moved / demo_copy.name)
    assert moved_products[0].image.startswith(str(moved))
    assert encoded_again == 0 and counter["rows"] == len(products)
