"""Training samples: bad ones are skipped and counted (with workers too); data order."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader

from makevl.config import DataConfig
from makevl.data.shop import load_shop
from makevl.training.data import Collator, EpochBatchSampler, PairDataset, training_pairs
from makevl.training.trainer import TrainingError, train


def fake_tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([[len(t), 1, 2] for t in texts])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def to_pixels(image) -> torch.Tensor:
    return TF.to_tensor(image.resize((16, 16)))


def break_images(catalog: Path, count: int = 2) -> list[str]:
    """Break the images of the ``count`` train products with most queries: text file, 0 bytes."""
    shop = load_shop(DataConfig(preset="demo", catalog=str(catalog)))
    products = shop.products_in("train")
    rows = Counter(row for _, row in training_pairs(products, shop.queries_in("train")))
    victims = [products[row] for row, _ in rows.most_common(count)]
    Path(victims[0].image).write_text("this is not an image")
    if count > 1:
        Path(victims[1].image).write_bytes(b"")
    return [p.id for p in victims]


def make_dataset(catalog: Path) -> tuple[PairDataset, list]:
    shop = load_shop(DataConfig(preset="demo", catalog=str(catalog)))
    products = shop.products_in("train")
    pairs = training_pairs(products, shop.queries_in("train"))
    keywords = [p.keywords for p in products]
    ids = [[i % 5] for i in range(len(products))]
    return PairDataset(pairs, products, ids, keywords, to_pixels, seed=0), products


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_images_are_skipped_and_counted(demo_copy: Path, workers: int) -> None:
    victims = break_images(demo_copy)
    dataset, products = make_dataset(demo_copy)
    expected = {
        "not a readable image": sum(products[r].id == victims[0] for _, r in dataset.pairs),
        "empty file": sum(products[r].id == victims[1] for _, r in dataset.pairs),
    }
    sampler = EpochBatchSampler(len(dataset), batch_size=4)
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers,
        collate_fn=Collator(fake_tokenize, fake_tokenize, num_keywords=5),
    )  # fmt: skip
    counts: dict[str, int] = {}
    good = 0
    for batch in loader:
        for bad in batch["bad"]:
            assert bad.product_id in victims
            assert ".csv:" in bad.where  # names the catalog row
            counts[bad.reason] = counts.get(bad.reason, 0) + 1
        good += batch["size"]
        if batch["size"]:
            inputs = batch["inputs"]
            assert inputs["pixel_values"].shape == (batch["size"], 3, 16, 16)
            assert inputs["keyword_targets"].sum(1).eq(1).all()
    seen = sampler.num_batches * 4
    dropped_by_sampler = len(dataset) - seen  # the incomplete last batch
    assert good + sum(counts.values()) == seen
    assert sum(counts.values()) <= sum(expected.values())
    assert sum(counts.values()) >= sum(expected.values()) - dropped_by_sampler
    assert set(counts) <= set(expected)


def test_empty_title_is_a_bad_sample(demo40: Path) -> None:
    dataset, products = make_dataset(demo40)
    _, row = dataset.pairs[0]
    products[row].title = "   "
    sample = dataset[0]
    assert sample.reason == "empty title" and sample.product_id == products[row].id


def test_sampler_shards_are_disjoint_and_resume_skips_consumed_batches() -> None:
    full = list(EpochBatchSampler(50, batch_size=4, seed=3, epoch=1))
    rank0 = list(EpochBatchSampler(50, batch_size=2, seed=3, epoch=1, rank=0, world_size=2))
    rank1 = list(EpochBatchSampler(50, batch_size=2, seed=3, epoch=1, rank=1, world_size=2))
    assert len(full) == len(rank0) == len(rank1) == 12
    for whole, a, b in zip(full, rank0, rank1):
        assert whole == a + b  # the same global batches, whatever the number of ranks
        assert not set(a) & set(b)
    resumed = list(EpochBatchSampler(50, batch_size=4, seed=3, epoch=1, start_batch=5))
    assert resumed == full[5:]
    assert list(EpochBatchSampler(50, batch_size=4, seed=3, epoch=2)) != full
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochBatchSampler(5, batch_size=4, world_size=2)


def test_pseudo_queries_come_from_the_products_keywords(demo40: Path) -> None:
    dataset, products = make_dataset(demo40)
    for i in range(len(dataset)):
        sample = dataset[i]
        own = products[sample["product_index"]].keywords
        words = sample["pseudo_query"].split(" ")
        assert 1 <= len(words) <= 3 and all(w in " ".join(own).split() for w in words)
    first = [dataset[i]["pseudo_query"] for i in range(len(dataset))]
    assert first == [dataset[i]["pseudo_query"] for i in range(len(dataset))]  # deterministic
    dataset.set_epoch(1)
    assert first != [dataset[i]["pseudo_query"] for i in range(len(dataset))]


def test_training_skips_bad_images_then_fails_above_max_bad_fraction(
    demo_copy: Path, tmp_path: Path, tiny_config, caplog
) -> None:
    (victim,) = break_images(demo_copy, count=1)
    cfg = tiny_config(demo_copy, tmp_path / "ok", "data.max_bad_fraction=0.5")
    with caplog.at_level(logging.WARNING, logger="makevl.training.trainer"):
        result = train(cfg)
    assert result.stopped == "finished" and result.step > 0
    assert result.bad_samples.get("not a readable image", 0) >= 1
    assert set(result.bad_samples) == {"not a readable image"}
    warnings = [r.getMessage() for r in caplog.records if "bad training sample" in r.getMessage()]
    assert len(warnings) == 1  # once per product, however often it is sampled
    assert victim in warnings[0] and "catalog.csv:" in warnings[0]

    strict = tiny_config(demo_copy, tmp_path / "fail", "data.max_bad_fraction=0.0")
    with pytest.raises(TrainingError, match=r"max_bad_fraction=0\.0") as info:
        train(strict)
    assert "not a readable image" in str(info.value)
