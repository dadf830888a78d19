"""On-disk cache of a frozen tower's outputs, so later epochs and runs skip that tower.

A frozen image (or title) tower gives the same features for the same input
every time, and on CPU it is most of the cost of a step. The features are
computed once and stored under a directory named by a fingerprint of the
tower (backbone name, a hash of its weights, image size or token length), so
a different backbone or size never reads stale features.

Inside that directory each build writes one shard: ``<shard>.<array>.npy``
files (float16, memory-mapped on read, so DataLoader workers share pages)
and ``<shard>.keys.json`` written last as the commit marker. A product's key
is a hash of its id plus its image file's size, mtime and path relative to the
catalog's folder (or the image bytes), or of the title text, so an edited
product is encoded again, but the same shop reached by another path (a moved
checkout, a mounted volume) is not.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from makevl.data.catalog import Product
from makevl.data.images import ImageError, load_image
from makevl.training.data import BadSample, bad_sample

log = logging.getLogger(__name__)

STORE_DTYPE = np.float16  # halves the disk; frozen activations lose nothing that matters


def default_cache_root(out_dir: str | Path) -> Path:
    """``$MAKEVL_CACHE_DIR``, else a ``cache/`` folder next to the run directory."""
    env = os.environ.get("MAKEVL_CACHE_DIR")
    return Path(env) if env else Path(out_dir).resolve().parent / "cache"


def tower_fingerprint(module: nn.Module, *settings: Any) -> str:
    """Hash of a module's weights and the settings that change its outputs."""
    digest = hashlib.sha1(repr(settings).encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()[:20]


def image_key(product: Product) -> str:
    """Id plus file size, mtime and path relative to the catalog (or the bytes themselves).

    Changes when the image does, not when the whole shop moves.
    """
    if isinstance(product.image, (bytes, bytearray)):
        source = hashlib.sha1(product.image).hexdigest()
    elif product.image:
        where = product.image
        if product.source:
            where = os.path.relpath(product.image, os.path.dirname(os.path.abspath(product.source)))
        try:
            stat = os.stat(product.image)
            source = f"{where}|{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:
            source = f"{where}|missing"
    else:
        source = "no image"
    return hashlib.sha1(f"{product.id}|{source}".encode()).hexdigest()


def title_key(product: Product) -> str:
    return hashlib.sha1(product.title.encode()).hexdigest()


class FeatureCache:
    """Shards of named feature arrays for one tower fingerprint; ``get`` reads one row."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.index: dict[str, tuple[str, int]] = {}
        self._arrays: dict[tuple[str, str], np.ndarray] = {}
        for keys_file in sorted(self.directory.glob("*.keys.json")):
            shard = keys_file.name[: -len(".keys.json")]
            for row, key in enumerate(json.loads(keys_file.read_text())):
                self.index[key] = (shard, row)

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:  # workers reopen their own memory maps
        return {**self.__dict__, "_arrays": {}}

    def add(self, keys: list[str], arrays: dict[str, np.ndarray]) -> None:
        """Write one shard; its keys file goes last, so a half-written shard is never read."""
        if not keys:
            return
        shard = uuid.uuid4().hex[:12]
        for name, values in arrays.items():
            if len(values) != len(keys):
                raise ValueError(f"{name}: {len(values)} rows for {len(keys)} keys")
            np.save(self.directory / f"{shard}.{name}.npy", np.ascontiguousarray(values))
        tmp = self.directory / f".{shard}.keys.json.tmp"
        tmp.write_text(json.dumps(keys))
        os.replace(tmp, self.directory / f"{shard}.keys.json")
        for row, key in enumerate(keys):
            self.index[key] = (shard, row)

    def get(self, key: str, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        shard, row = self.index[key]
        out = {}
        for name in names:
            array = self._arrays.get((shard, name))
            if array is None:
                array = np.load(self.directory / f"{shard}.{name}.npy", mmap_mode="r")
                self._arrays[(shard, name)] = array
            value = torch.from_numpy(np.array(array[row]))
            out[name] = value.float() if value.is_floating_point() else value
        return out


class CachedFeatures:
    """Picklable ``product_index -> {batch key: tensor}`` lookup for the training dataset."""

    def __init__(self, cache: FeatureCache, keys: list[str | None], names: dict[str, str]):
        self.cache = cache
        self.keys = keys  # per product index; None for a product that could not be encoded
        self.names = names  # stored array name -> batch key

    def __call__(self, row: int) -> dict[str, torch.Tensor]:
        return self.lookup(self.keys[row])

    def lookup(self, key: str) -> dict[str, torch.Tensor]:
        """Features by cache key (:func:`image_key` / :func:`title_key`), for streamed products."""
        stored = self.cache.get(key, tuple(self.names))
        return {self.names[name]: value for name, value in stored.items()}


SHARD_ROWS = 4096  # rows per shard: memory stays bounded however large the catalog


def _encode_missing(
    cache: FeatureCache,
    todo: list[tuple[str, Any]],
    encode: Callable[[list[tuple[str, Any]]], tuple[list[str], dict[str, np.ndarray]]],
    batch_size: int,
    desc: str,
) -> None:
    """Encode ``todo`` in batches, writing a shard every SHARD_ROWS rows.

    ``encode(chunk)`` returns the keys it encoded (it may drop unusable items)
    and their arrays.
    """
    keys: list[str] = []
    arrays: dict[str, list[np.ndarray]] = {}

    def flush() -> None:
        cache.add(keys, {name: np.concatenate(parts) for name, parts in arrays.items()})
        keys.clear()
        arrays.clear()

    starts = range(0, len(todo), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not todo, mininterval=2):
        done, out = encode(todo[start : start + batch_size])
        keys += done
        for name, values in out.items():
            arrays.setdefault(name, []).append(values)
        if len(keys) >= SHARD_ROWS:
            flush()
    if keys:
        flush()


@torch.no_grad()
def cache_image_features(
    encoder: nn.Module,
    transform: Callable[[Any], torch.Tensor],
    products: list[Product],
    cache_root: str | Path,
    settings: tuple,
    device: torch.device,
    batch_size: int = 64,
    fingerprint: str | None = None,
) -> tuple[CachedFeatures, dict[int, BadSample], int]:
    """Encode the images not cached yet; return the lookup, unusable products, count encoded.

    ``encoder(pixel_values) -> (tokens, pooled)`` is the frozen image tower.
    ``fingerprint``: its :func:`tower_fingerprint`, when the caller has it already.
    """
    fingerprint = fingerprint or tower_fingerprint(encoder, *settings)
    cache = FeatureCache(Path(cache_root) / f"image-{fingerprint}")
    keys: list[str | None] = []
    bad: dict[int, BadSample] = {}
    todo: list[tuple[str, int]] = []  # (key, row); images are decoded batch by batch
    queued: set[str] = set()
    for row, product in enumerate(products):
        key = image_key(product)
        keys.append(key)
        if key not in cache and key not in queued:
            todo.append((key, row))
            queued.add(key)

    def encode(chunk: list[tuple[str, int]]) -> tuple[list[str], dict[str, np.ndarray]]:
        done, pixels = [], []
        for key, row in chunk:
            try:
                pixels.append(transform(load_image(products[row].image)))
                done.append(key)
            except (ImageError, OSError) as exc:
                reason = exc.reason if isinstance(exc, ImageError) else "not a readable image"
                bad[row] = bad_sample(products[row], reason, str(exc))
                keys[row] = None
        if not pixels:
            return done, {}
        tokens, pooled = encoder(torch.stack(pixels).to(device))
        return done, {
            "tokens": tokens.float().cpu().numpy().astype(STORE_DTYPE),
            "pooled": pooled.float().cpu().numpy().astype(STORE_DTYPE),
        }

    encoder.eval()
    _encode_missing(cache, todo, encode, batch_size, "caching image features")
    for row, key in enumerate(keys):  # repeats of an image that failed above
        if key is not None and key not in cache:
            bad[row] = bad_sample(products[row], "unreadable image", "same image failed before")
            keys[row] = None
    log.info(
        "image feature cache %s: %d encoded, %d reused",
        cache.directory,
        len(todo) - len(bad),
        len(products) - len(todo),
    )
    names = {"tokens": "image_tokens", "pooled": "image_pooled"}
    return CachedFeatures(cache, keys, names), bad, len(todo) - len(bad)


@torch.no_grad()
def cache_title_features(
    encoder: nn.Module,
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
    products: list[Product],
    cache_root: str | Path,
    settings: tuple,
    max_tokens: int,
    device: torch.device,
    batch_size: int = 64,
    fingerprint: str | None = None,
) -> tuple[CachedFeatures, int]:
    """Encode the titles not cached yet (padded to ``max_tokens``); return lookup, count encoded.

    ``encoder(input_ids, attention_mask) -> (tokens, pooled)`` is the frozen title tower.
    ``fingerprint``: its :func:`tower_fingerprint`, when the caller has it already.
    """
    fingerprint = fingerprint or tower_fingerprint(encoder, *settings)
    cache = FeatureCache(Path(cache_root) / f"title-{fingerprint}")
    keys = [title_key(p) for p in products]
    todo, queued = [], set()
    for key, product in zip(keys, products):
        if key not in cache and key not in queued:
            queued.add(key)
            todo.append((key, product.title))

    def encode(chunk: list[tuple[str, str]]) -> tuple[list[str], dict[str, np.ndarray]]:
        titles = [title for _, title in chunk]
        batch = tokenize(titles)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        tokens, pooled = encoder(ids, mask)
        padded = torch.zeros(len(titles), max_tokens, tokens.shape[-1])
        padded[:, : tokens.shape[1]] = tokens.float().cpu()[:, :max_tokens]
        full_mask = torch.zeros(len(titles), max_tokens, dtype=torch.long)
        full_mask[:, : mask.shape[1]] = mask.cpu()[:, :max_tokens]
        return [key for key, _ in chunk], {
            "tokens": padded.numpy().astype(STORE_DTYPE),
            "pooled": pooled.float().cpu().numpy().astype(STORE_DTYPE),
            "mask": full_mask.numpy().astype(np.int64),
        }

    encoder.eval()
    _encode_missing(cache, todo, encode, batch_size, "caching title features")
    log.info("title feature cache %s: %d encoded", cache.directory, len(todo))
    names = {"tokens": "title_tokens", "pooled": "title_pooled", "mask": "title_attention_mask"}
    return CachedFeatures(cache, keys, names), len(todo)
