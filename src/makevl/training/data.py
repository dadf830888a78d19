"""Training samples: one per positive (query, product) pair of the train split.

The dataset loads images (or reads a frozen tower's cached features), the
collator tokenizes whole batches with the model's tokenizers. A sample whose
image is corrupt or missing, or whose title is empty, comes back as a
:class:`BadSample` instead of raising, even inside a DataLoader worker; the
collator drops it and hands it to the trainer, which counts and logs it.

Data order is a seeded permutation per epoch cut into global batches
(``batch_size * world_size``), each rank taking its own slice. The order does
not depend on the number of ranks, and resuming mid-epoch just starts the
batch list further in.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from makevl.data.catalog import Product, QueryRecord
from makevl.data.images import ImageError, load_image


@dataclass
class BadSample:
    """A training sample that cannot be used, and why."""

    reason: str  # short tag: "empty title", "missing file", "not a readable image", ...
    product_id: str
    where: str  # catalog file:line
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.where}: product {self.product_id}: {self.reason}" + (
            f" ({self.detail})" if self.detail else ""
        )


def bad_sample(product: Product, reason: str, detail: str = "") -> BadSample:
    return BadSample(reason, product.id, product.where, detail)


def training_pairs(products: list[Product], records: list[QueryRecord]) -> list[tuple[str, int]]:
    """``(query, product_index)`` for each distinct positive pair whose product is in ``products``."""
    index = {p.id: i for i, p in enumerate(products)}
    seen: set[tuple[str, int]] = set()
    pairs: list[tuple[str, int]] = []
    for record in records:
        row = index.get(record.product_id)
        if row is None or record.label <= 0:
            continue
        pair = (record.query, row)
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def sample_pseudo_query(keywords: list[str], rng: random.Random) -> str:
    """1-3 of the product's own keywords, in random order, joined by spaces."""
    count = rng.randint(1, min(3, len(keywords)))
    return " ".join(rng.sample(keywords, count))


class PairDataset(Dataset):
    """(query, product) pairs; the product side is its title plus image or cached features.

    ``image_features`` / ``title_features`` map a product index to a frozen
    tower's cached output (see :mod:`makevl.training.cache`); when given, the
    image is not opened / the title not encoded at all. ``known_bad`` holds
    products already found unusable (e.g. while building the cache).
    """

    def __init__(
        self,
        pairs: list[tuple[str, int]],
        products: list[Product],
        keyword_ids: list[list[int]],
        keyword_texts: list[list[str]],
        image_transform: Callable[[Any], torch.Tensor],
        seed: int = 0,
        image_features: Callable[[int], dict[str, torch.Tensor]] | None = None,
        title_features: Callable[[int], dict[str, torch.Tensor]] | None = None,
        known_bad: dict[int, BadSample] | None = None,
        augment_query: Callable[[str, random.Random], str] | None = None,
        augment_pseudo_query: Callable[[str, random.Random], str] | None = None,
    ) -> None:
        self.pairs = pairs
        self.products = products
        self.keyword_ids = keyword_ids
        self.keyword_texts = keyword_texts
        self.image_transform = image_transform
        self.seed = seed
        self.epoch = 0
        self.image_features = image_features
        self.title_features = title_features
        self.known_bad = known_bad or {}
        self.augment_query = augment_query
        self.augment_pseudo_query = augment_pseudo_query

    def set_epoch(self, epoch: int) -> None:
        """Pseudo-queries are re-drawn each epoch (workers get a fresh copy per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any] | BadSample:
        query, row = self.pairs[i]
        if row in self.known_bad:
            return self.known_bad[row]
        # Seeded per (seed, epoch, sample): same pseudo-query on resume and on any rank.
        rng = random.Random(f"{self.seed}:{self.epoch}:{i}")
        return make_sample(
            query, self.products[row], row, self.keyword_ids[row], self.keyword_texts[row], rng,
            self.image_transform,
            self.image_features(row) if self.image_features is not None else None,
            self.title_features(row) if self.title_features is not None else None,
            self.augment_query, self.augment_pseudo_query,
        )  # fmt: skip


def make_sample(
    query: str,
    product: Product,
    product_index: int,
    keyword_ids: list[int],
    keywords: list[str],
    rng: random.Random,
    image_transform: Callable[[Any], torch.Tensor],
    image_features: dict[str, torch.Tensor] | None = None,
    title_features: dict[str, torch.Tensor] | None = None,
    augment_query: Callable[[str, random.Random], str] | None = None,
    augment_pseudo_query: Callable[[str, random.Random], str] | None = None,
) -> dict[str, Any] | BadSample:
    """One training sample; the image is opened only when no cached features are given.

    ``product_index`` identifies the product within the run (equal ids are not
    each other's negatives). ``augment_query`` rewrites the query after the
    pseudo-query is drawn, so the pseudo-query is the same with or without it;
    ``augment_pseudo_query`` then rewrites the pseudo-query, so the query is the
    same with or without that.
    """
    if not product.title.strip():
        return bad_sample(product, "empty title")
    # A product without keywords gets its real query as pseudo-query.
    pseudo_query = sample_pseudo_query(keywords, rng) if keywords else query
    if augment_query is not None:
        query = augment_query(query, rng)
    if augment_pseudo_query is not None:
        pseudo_query = augment_pseudo_query(pseudo_query, rng)
    sample: dict[str, Any] = {
        "query": query,
        "title": product.title,
        "pseudo_query": pseudo_query,
        "product_index": product_index,
        "keyword_ids": keyword_ids,
    }
    if image_features is not None:
        sample.update(image_features)
    else:
        try:
            sample["pixel_values"] = image_transform(load_image(product.image))
        except ImageError as exc:
            return bad_sample(product, exc.reason, str(exc))
        except OSError as exc:  # decoding problems surfacing inside the transform
            return bad_sample(product, "not a readable image", str(exc))
    if title_features is not None:
        sample.update(title_features)
    return sample


class Collator:
    """Drops bad samples and tokenizes the rest as one batch for ``MakeModel.forward``."""

    def __init__(
        self,
        tokenize_queries: Callable[[list[str]], dict[str, torch.Tensor]],
        tokenize_titles: Callable[[list[str]], dict[str, torch.Tensor]],
        num_keywords: int,
    ) -> None:
        self.tokenize_queries = tokenize_queries
        self.tokenize_titles = tokenize_titles
        self.num_keywords = num_keywords

    def __call__(self, samples: list[dict[str, Any] | BadSample]) -> dict[str, Any]:
        bad = [s for s in samples if isinstance(s, BadSample)]
        good = [s for s in samples if not isinstance(s, BadSample)]
        if not good:
            return {"inputs": None, "bad": bad, "size": 0}
        queries = self.tokenize_queries([s["query"] for s in good])
        pseudo = self.tokenize_queries([s["pseudo_query"] for s in good])
        inputs: dict[str, torch.Tensor] = {
            "query_input_ids": queries["input_ids"],
            "query_attention_mask": queries["attention_mask"],
            "pseudo_query_input_ids": pseudo["input_ids"],
            "pseudo_query_attention_mask": pseudo["attention_mask"],
            "product_index": torch.tensor([s["product_index"] for s in good], dtype=torch.long),
        }
        targets = torch.zeros(len(good), self.num_keywords)
        for row, s in enumerate(good):
            targets[row, s["keyword_ids"]] = 1.0
        inputs["keyword_targets"] = targets
        if "title_tokens" in good[0]:
            for key in ("title_tokens", "title_pooled", "title_attention_mask"):
                inputs[key] = torch.stack([s[key] for s in good])
        else:
            titles = self.tokenize_titles([s["title"] for s in good])
            inputs["title_input_ids"] = titles["input_ids"]
            inputs["title_attention_mask"] = titles["attention_mask"]
        image_keys = (
            ("image_tokens", "image_pooled") if "image_tokens" in good[0] else ("pixel_values",)
        )
        for key in image_keys:
            inputs[key] = torch.stack([s[key] for s in good])
        return {"inputs": inputs, "bad": bad, "size": len(good)}


def batches_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    """Full global batches in an epoch (the remainder is dropped, a new permutation reuses it)."""
    global_batch = batch_size * world_size
    if num_samples < global_batch:
        raise ValueError(
            f"the train split has {num_samples} (query, product) pairs, fewer than one global "
            f"batch of {global_batch} (train.batch_size={batch_size} x {world_size} ranks); "
            "lower train.batch_size or use more data"
        )
    return num_samples // global_batch


class EpochBatchSampler(Sampler[list[int]]):
    """This rank's slice of every global batch of a seeded per-epoch permutation."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start_batch: int = 0,
        num_batches: int | None = None,  # fewer than the epoch holds, e.g. whole accumulations
    ) -> None:
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.rank = rank
        self.world_size = world_size
        self.start_batch = start_batch
        self.num_batches = num_batches or batches_per_epoch(num_samples, batch_size, world_size)

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.num_batches):
            start = b * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size]
