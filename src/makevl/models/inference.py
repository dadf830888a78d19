"""From strings and products to numpy vectors with a :class:`MakeModel`.

Tokenizing, image loading (a bad image becomes a blank one, reported) and
batched encoding live here, so training, evaluation, the index and the server
all feed the model the same way. :class:`MakeEncoder` is what they call.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from makevl.data.catalog import Product
from makevl.data.images import ImageError, describe, load_image
from makevl.models.make import BRANCHES, MakeModel

log = logging.getLogger(__name__)

BLANK_GRAY = (128, 128, 128)
OnError = Callable[[Product, Exception], None]


class ProductVectors(NamedTuple):
    """Encoded products, row-aligned: unpacks as ``vectors, modality_weights, ids``."""

    vectors: np.ndarray  # [N, d] float32, unit norm
    modality_weights: np.ndarray  # [N, 3] over BRANCHES (title, image, fused)
    ids: list[str]


def tokenize(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    encoded = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def warn_image_error(product: Product, exc: Exception) -> None:
    log.warning(
        "product %s (%s): image %s unusable, encoded with a blank image: %s",
        product.id,
        product.where,
        describe(product.image),
        exc,
    )


def chunks(items: Iterable[Product], size: int) -> Iterator[list[Product]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# The image transform of the pool's parent process; forked workers inherit it.
_worker_transform: Callable[[Product], tuple[torch.Tensor, Exception | None]] | None = None


def _worker_init() -> None:
    torch.set_num_threads(1)  # the parent's thread pool does not survive a fork


def _worker_pixels(product: Product) -> tuple[np.ndarray, Exception | None]:
    pixels, error = _worker_transform(product)
    if error is not None and not isinstance(error, OSError):
        error = ValueError(str(error))  # ImageError does not unpickle; its message does
    return pixels.numpy(), error


class MakeEncoder:
    """A :class:`MakeModel` with its preprocessing: texts and products in, numpy out.

    It is the index's ``Encoder``; ``model`` is the wrapped module, ``keywords`` its
    keyword vocabulary (the checkpoint's), needed only by :meth:`query_keywords`.
    Queries are spelling-corrected first where the model carries a corrector
    (``model.spelling``), unless ``correct_spelling=False`` (the report's ablation).
    """

    def __init__(
        self,
        model: MakeModel,
        keywords: list[str] | None = None,
        image_workers: int = 0,
        correct_spelling: bool = True,
    ) -> None:
        self.model = model
        self.keywords = keywords
        self.correct_spelling = correct_spelling
        # Processes that decode and resize product images while the model runs (0: none).
        self.image_workers = image_workers

    # ---------------------------------------------------------------- preprocessing

    def tokenize_queries(self, texts: list[str]) -> dict[str, torch.Tensor]:
        model = self.model
        if self.correct_spelling and model.spelling is not None:
            texts = model.spelling.correct_all(texts)
        return tokenize(model.query_encoder.tokenizer, texts, model.max_query_tokens)

    def tokenize_titles(self, texts: list[str]) -> dict[str, torch.Tensor]:
        model = self.model
        return tokenize(model.title_encoder.tokenizer, texts, model.max_title_tokens)

    def image_transform(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> [3, S, S]: padded to a square on white, resized, normalized."""
        return self.model.image_encoder.transform(image, self.model.image_size)

    def product_pixels(self, product: Product, on_error: OnError) -> torch.Tensor:
        """The product's image as pixels; blank gray (reported) when it cannot be used."""
        pixels, error = self._pixels_or_error(product)
        if error is not None:
            on_error(product, error)
        return pixels

    def _pixels_or_error(self, product: Product) -> tuple[torch.Tensor, Exception | None]:
        try:
            return self.image_transform(load_image(product.image)), None
        except (ImageError, OSError) as exc:
            size = self.model.image_size
            return self.image_transform(Image.new("RGB", (size, size), BLANK_GRAY)), exc

    def _pixel_batches(
        self, products: Iterable[Product], batch_size: int, on_error: OnError
    ) -> Iterator[tuple[list[Product], torch.Tensor]]:
        """``(products, pixels [B, 3, S, S])`` per batch, channels-last (faster convolutions
        on CPU). With ``image_workers`` the next batch is decoded while this one is encoded;
        the workers are forked, so they share the parent's transform without pickling it."""
        if self.image_workers <= 0:
            for chunk in chunks(products, batch_size):
                pixels = torch.stack([self.product_pixels(p, on_error) for p in chunk])
                yield chunk, pixels.contiguous(memory_format=torch.channels_last)
            return
        global _worker_transform
        _worker_transform = self._pixels_or_error
        context = multiprocessing.get_context("fork")
        try:
            with context.Pool(self.image_workers, initializer=_worker_init) as pool:
                batches = chunks(products, batch_size)
                chunk = next(batches, None)
                pending = pool.map_async(_worker_pixels, chunk) if chunk else None
                while chunk:
                    loaded = pending.get()
                    following = next(batches, None)
                    pending = pool.map_async(_worker_pixels, following) if following else None
                    for product, (_, error) in zip(chunk, loaded):
                        if error is not None:
                            on_error(product, error)
                    pixels = torch.from_numpy(np.stack([array for array, _ in loaded]))
                    yield chunk, pixels.contiguous(memory_format=torch.channels_last)
                    chunk = following
        finally:
            _worker_transform = None  # the model is not kept alive by it

    # --------------------------------------------------------------------- encoding

    @torch.no_grad()
    def encode_queries(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Query vectors [N, d] float32, L2-normalized."""
        model = self.model
        was_training = model.training
        if was_training:  # switching modes walks every module: not on each served query
            model.eval()
        try:
            out = [np.zeros((0, model.embed_dim), dtype=np.float32)]
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenize_queries(texts[start : start + batch_size])
                q = model.encode_query(**{k: v.to(model.device) for k, v in tokens.items()})
                out.append(q.float().cpu().numpy())
            return np.concatenate(out)
        finally:
            if was_training:
                model.train()

    @torch.no_grad()
    def query_keywords(self, texts: list[str], top: int = 5) -> list[list[tuple[str, float]]]:
        """Per query, the ``top`` keywords Keyword Enhancement attends to most, with their
        attention weights; empty lists for a model without KE or without ``keywords``."""
        model = self.model
        if not (model.keyword_enhanced and self.keywords) or not texts:
            return [[] for _ in texts]
        if len(self.keywords) != model.num_keywords:
            raise ValueError(
                f"{len(self.keywords)} keywords for a keyword memory of {model.num_keywords}"
            )
        was_training = model.training
        model.eval()
        try:
            tokens = self.tokenize_queries(texts)
            _, q = model.encode_query_pair(**{k: v.to(model.device) for k, v in tokens.items()})
            weights, best = model.keyword_attention(q).topk(min(top, model.num_keywords), dim=-1)
        finally:
            model.train(was_training)
        return [
            [(self.keywords[i], w) for i, w in zip(row_ids.tolist(), row_weights.tolist())]
            for row_ids, row_weights in zip(best, weights)
        ]

    def encode_products(
        self, products: Iterable[Product], batch_size: int = 64, on_error: OnError | None = None
    ) -> ProductVectors:
        """Product vectors, MA weights and ids, streaming over ``products``.

        A product whose image cannot be used is encoded with a blank gray image
        and reported through ``on_error(product, exc)`` (default: a log warning).
        """
        arrays, ids = self._encode(products, ("product", "modality_weights"), batch_size, on_error)
        return ProductVectors(arrays["product"], arrays["modality_weights"], ids)

    def encode_branch(
        self,
        products: Iterable[Product],
        branch: str,
        batch_size: int = 64,
        on_error: OnError | None = None,
    ) -> np.ndarray:
        """One branch's unit vectors [N, d] (``"title"``, ``"image"`` or ``"fused"``),
        for baselines built on a single branch."""
        return self.encode_branches(products, (branch,), batch_size, on_error)[branch]

    def encode_branches(
        self,
        products: Iterable[Product],
        branches: tuple[str, ...] = BRANCHES,
        batch_size: int = 64,
        on_error: OnError | None = None,
    ) -> dict[str, np.ndarray]:
        """Each of ``branches``' unit vectors [N, d], by branch name, in pool order."""
        unknown = [b for b in branches if b not in BRANCHES]
        if unknown:
            raise ValueError(f"unknown branch {unknown[0]!r}; expected one of {BRANCHES}")
        return self._encode(products, branches, batch_size, on_error)[0]

    @torch.no_grad()
    def _encode(
        self,
        products: Iterable[Product],
        keys: tuple[str, ...],
        batch_size: int,
        on_error: OnError | None,
    ) -> tuple[dict[str, np.ndarray], list[str]]:
        model = self.model
        on_error = on_error or warn_image_error
        parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
        ids: list[str] = []
        was_training = model.training
        model.eval()
        try:
            for chunk, pixels in self._pixel_batches(products, batch_size, on_error):
                titles = self.tokenize_titles([p.title for p in chunk])
                out = self._product_outputs(titles, pixels)
                for key in keys:
                    parts[key].append(out[key])
                ids.extend(p.id for p in chunk)
        finally:
            model.train(was_training)
        arrays = {}
        for key, rows in parts.items():
            width = len(BRANCHES) if key == "modality_weights" else model.embed_dim
            arrays[key] = np.concatenate(rows) if rows else np.zeros((0, width), np.float32)
        return arrays, ids

    def _product_outputs(
        self, titles: dict[str, torch.Tensor], pixels: torch.Tensor
    ) -> dict[str, np.ndarray]:
        """One batch through the product side: ``MakeModel.encode_product``'s outputs as
        float32 numpy. A compiled runtime overrides this (see makevl.index.product_runtime)."""
        model = self.model
        out = model.encode_product(
            titles["input_ids"].to(model.device),
            titles["attention_mask"].to(model.device),
            pixel_values=pixels.to(model.device),
        )
        return {key: value.float().cpu().numpy() for key, value in out.items()}
