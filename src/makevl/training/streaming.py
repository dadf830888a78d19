"""Training pairs streamed from the pair shards of ``makevl data shard``.

The order keeps the in-memory loader's rules (:mod:`makevl.training.data`), so
a run behaves the same whether the shop fits in memory or not:

- Each epoch the shards are visited in a permutation drawn from (seed, epoch),
  and the rows of each shard in a permutation drawn from (seed, epoch, shard).
  Together they are one stream of every pair, cut into global batches of
  ``batch_size * world_size``; the last partial batch is dropped (the next
  epoch's permutation reuses it).
- Each rank keeps its own slice of every global batch, so the order does not
  depend on the number of ranks, and only decodes the images of its own rows.
- DataLoader workers take whole batches round-robin (worker ``w`` of ``W``
  yields batches ``w, w+W, ...``), which is the order the DataLoader collects
  them in, so the batch sequence does not depend on the number of workers.
- The position in the stream is (epoch, batches done). Row counts come from
  the manifest, so resuming at batch ``k`` is arithmetic: shards wholly before
  it are not even opened.

Why not a shuffle buffer (WebDataset) or the ``datasets`` library: a buffer's
order depends on how many workers and ranks read it, and resuming it exactly
means saving its contents. A permutation of a shard's row indices is
reproducible from the seed alone, and one shard of rows in memory per worker
is the price. Shards are hash partitions of the products, so every shard is a
random sample of the catalog and batches drawn from one or two shards mix
products much as a global shuffle does (a product's pairs share a shard,
which makes a repeat of a product in a batch slightly likelier; the loss
already treats equal products as non-negatives).

Frozen towers' features are cached shard by shard (:func:`fill_feature_caches`),
each shard in its own cache folder, so neither the cache index nor the rows
of more than one shard are ever in memory.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch
from torch import nn
from torch.utils.data import IterableDataset, get_worker_info

from makevl.config import DataConfig
from makevl.data.catalog import Product
from makevl.data.shard import ShardError, ShardManifest, row_product
from makevl.training.cache import (
    CachedFeatures,
    FeatureCache,
    cache_image_features,
    cache_title_features,
    image_key,
    title_key,
    tower_fingerprint,
)
from makevl.training.data import BadSample, bad_sample, batches_per_epoch, make_sample

# (cache folder, stored array name -> batch key) of one shard's frozen-tower features
FeatureSource = tuple[Path, dict[str, str]]


def product_index(product_id: str) -> int:
    """A run-wide integer id for a product (the loss's "same product" test), >= 0."""
    digest = hashlib.blake2b(product_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def open_train_shards(cfg: DataConfig) -> ShardManifest:
    """The manifest of ``data.train_shards``, checked against the run's data settings."""
    manifest = ShardManifest.load(cfg.train_shards)
    made = (manifest.split_seed, manifest.val_fraction, manifest.test_fraction)
    wanted = (cfg.split_seed, cfg.val_fraction, cfg.test_fraction)
    if made != wanted:
        raise ShardError(
            f"{cfg.train_shards}: the shards were split with (seed, val, test) = {made}, the run "
            f"config says {wanted} (data.split_seed, data.val_fraction, data.test_fraction); "
            "change those or re-shard with --split-seed/--val-fraction/--test-fraction"
        )
    if cfg.sparse_titles:
        raise ShardError("data.sparse_titles does not apply to data.train_shards (not supported)")
    return manifest


def read_shard(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def shard_products(path: Path) -> list[Product]:
    """The distinct products of one pair shard."""
    products: dict[str, Product] = {}
    for row in read_shard(path):
        if row["product_id"] not in products:
            products[row["product_id"]] = row_product(row)
    return list(products.values())


class StreamingPairDataset(IterableDataset):
    """This rank's slice of every global batch of pair shards, as lists of samples.

    Use with ``DataLoader(dataset, batch_size=None, collate_fn=Collator(...))``.
    ``set_position(epoch, start_batch, num_batches)`` before each epoch.
    """

    def __init__(
        self,
        manifest: ShardManifest,
        keyword_index: dict[str, int],
        image_transform: Callable[[Any], torch.Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        image_features: list[FeatureSource] | None = None,
        title_features: list[FeatureSource] | None = None,
    ) -> None:
        self.files = [manifest.path(i) for i in range(len(manifest.shards))]
        self.rows = [shard.rows for shard in manifest.shards]
        self.keyword_index = keyword_index
        self.image_transform = image_transform
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.image_features, self.title_features = image_features, title_features
        self.batches_per_epoch = batches_per_epoch(sum(self.rows), batch_size, world_size)
        self.set_position(0)

    def set_position(
        self, epoch: int, start_batch: int = 0, num_batches: int | None = None
    ) -> None:
        """Yield batches ``start_batch`` up to ``num_batches`` (default: all) of ``epoch``."""
        self.epoch, self.start_batch = epoch, start_batch
        self.num_batches = num_batches or self.batches_per_epoch

    # -------------------------------------------------------------------- the order

    def shard_order(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(len(self.files), generator=generator).tolist()

    def row_order(self, shard: int) -> list[int]:
        seed = (self.seed * 100_003 + self.epoch) * 100_003 + shard
        generator = torch.Generator().manual_seed(seed % 2**63)
        return torch.randperm(self.rows[shard], generator=generator).tolist()

    def positions(self) -> Iterator[list[tuple[int, int]]]:
        """(shard, row) of every sample of this rank's batches, batch by batch, this worker's."""
        worker = get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker else (0, 1)
        order = self.shard_order()
        ends = []  # stream position where each shard of ``order`` ends
        for shard in order:
            ends.append((ends[-1] if ends else 0) + self.rows[shard])
        global_batch = self.batch_size * self.world_size
        rows: list[int] = []
        loaded = -1
        for batch in range(self.start_batch + worker_id, self.num_batches, workers):
            first = batch * global_batch + self.rank * self.batch_size
            out = []
            for position in range(first, first + self.batch_size):
                k = bisect.bisect_right(ends, position)
                if k != loaded:
                    rows, loaded = self.row_order(order[k]), k
                out.append((order[k], rows[position - (ends[k - 1] if k else 0)]))
            yield out

    # ------------------------------------------------------------------ the samples

    def __iter__(self) -> Iterator[list[dict[str, Any] | BadSample]]:
        shard, table = -1, []
        image = title = None
        for batch in self.positions():
            samples = []
            for index, row in batch:
                if index != shard:  # one shard's rows in memory at a time
                    shard, table = index, read_shard(self.files[index])
                    image = self._open(self.image_features, index)
                    title = self._open(self.title_features, index)
                samples.append(self._sample(table[row], f"{index}:{row}", image, title))
            yield samples

    @staticmethod
    def _open(sources: list[FeatureSource] | None, shard: int) -> CachedFeatures | None:
        if sources is None:
            return None
        folder, names = sources[shard]
        return CachedFeatures(FeatureCache(folder), [], names)

    def _sample(
        self,
        row: dict[str, Any],
        pair: str,
        image: CachedFeatures | None,
        title: CachedFeatures | None,
    ) -> dict[str, Any] | BadSample:
        product = row_product(row)
        image_values = title_values = None
        if image is not None:
            key = image_key(product)
            if key not in image.cache:
                return bad_sample(product, "unreadable image", "it could not be cached")
            image_values = image.lookup(key)
        if title is not None:
            title_values = title.lookup(title_key(product))
        # Seeded per (seed, epoch, pair): same pseudo-query on resume and on any rank.
        rng = random.Random(f"{self.seed}:{self.epoch}:{pair}")
        keywords = list(row["keywords"])
        sample = make_sample(
            row["query"], product, product_index(product.id),
            [self.keyword_index[k] for k in keywords], keywords, rng, self.image_transform,
            image_values, title_values,
        )  # fmt: skip
        if isinstance(sample, dict):
            sample["pair"] = pair  # "shard:row", which pair this is (tests follow it)
        return sample


def fill_feature_caches(
    manifest: ShardManifest,
    cache_root: Path,
    device: torch.device,
    image: tuple[nn.Module, Callable[[Any], torch.Tensor], tuple] | None = None,
    title: tuple[nn.Module, Callable[[list[str]], dict], tuple, int] | None = None,
) -> tuple[list[FeatureSource] | None, list[FeatureSource] | None]:
    """Encode each shard's products with the frozen towers not yet cached, shard by shard.

    ``image`` is (encoder, transform, settings), ``title`` (encoder, tokenize,
    settings, max_tokens), as for :func:`cache_image_features` /
    :func:`cache_title_features`. Each shard's cache lives in a folder named by
    its SHA-256, so a rewritten shard is encoded again.
    """
    image_print = tower_fingerprint(image[0], *image[2]) if image else None
    title_print = tower_fingerprint(title[0], *title[2]) if title else None
    image_sources: list[FeatureSource] = []
    title_sources: list[FeatureSource] = []
    for index, shard in enumerate(manifest.shards):
        products = shard_products(manifest.path(index))
        root = cache_root / f"shard-{shard.sha256[:20]}"
        if image:
            encoder, transform, settings = image
            found, _, _ = cache_image_features(encoder, transform, products, root, settings,
                                               device, fingerprint=image_print)  # fmt: skip
            image_sources.append((found.cache.directory, found.names))
        if title:
            encoder, tokenize, settings, max_tokens = title
            found, _ = cache_title_features(encoder, tokenize, products, root, settings,
                                            max_tokens, device, fingerprint=title_print)  # fmt: skip
            title_sources.append((found.cache.directory, found.names))
    return (image_sources if image else None), (title_sources if title else None)
