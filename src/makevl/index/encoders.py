"""What the index needs from a model, and where it gets one.

An index only needs two calls from a model: encode queries, and encode products
(vectors plus the Modal Adaptation weights shown with every result). Anything
with those two methods is an :class:`Encoder`. The trained MAKE model is one;
:class:`HashingEncoder`, a model-free hashed bag of words, is another, so the
index, the server and their tests run without a checkpoint.

Every index remembers which encoder built it (``spec``) and a hash of its
weights (``model_hash``), so queries are never scored by a different model. A
checkpoint's model files are copied into the index (``model/``), and the spec
names that folder relative to the index: the index keeps working when it is
moved or the checkpoint is deleted, and a model swapped in is refused by hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from makevl.data.catalog import Product
from makevl.data.text import words
from makevl.files import file_sha256
from makevl.index.errors import IndexFileError, ModelMismatchError
from makevl.index.store import MODEL_DIR

OnError = Callable[[Product, Exception], None]


class Encoder(Protocol):
    def encode_queries(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """``[N, d]`` float32, unit norm."""
        ...

    def encode_products(
        self, products: Iterable[Product], batch_size: int = 64, on_error: OnError | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """``(vectors [N, d], modality_weights [N, 3] over (title, image, fused), ids)``; failed
        products are passed to ``on_error`` and left out."""
        ...


class EncoderSpecError(ValueError):
    """A manifest names an encoder this code cannot rebuild."""


class HashingEncoder:
    """Hashed bag of words (words and their 4-letter prefixes) into ``dim`` signed buckets.

    A deterministic stand-in for a trained model: no weights, same vectors in
    every process. Titles and attribute values are the product text; the MA
    weights are made up from the text length so the web page has something to
    show, and say so in ``spec``.
    """

    def __init__(self, dim: int = 64) -> None:
        if dim < 8:
            raise ValueError(f"HashingEncoder dim must be >= 8, got {dim}")
        self.dim = dim

    @property
    def spec(self) -> dict[str, Any]:
        return {"type": "hashing", "dim": self.dim}

    @property
    def model_hash(self) -> str:
        return f"hashing-v1-dim{self.dim}"

    def _embed(self, text: str) -> np.ndarray:
        vector = np.zeros(self.dim, dtype=np.float32)
        for word in words(text):
            for token, weight in ((word, 1.0), (word[:4], 0.5)):
                h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "big")
                vector[h % self.dim] += weight if (h >> 32) & 1 else -weight
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def encode_queries(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._embed(text)
        return out

    def encode_products(
        self, products: Iterable[Product], batch_size: int = 64, on_error: OnError | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        vectors, weights, ids = [], [], []
        for product in products:
            if not product.title.strip():
                error = ValueError("empty title")
                if on_error is None:
                    raise error
                on_error(product, error)
                continue
            text = " ".join([product.title, *product.attributes.values()])
            vectors.append(self._embed(text))
            logits = np.array(
                [len(words(product.title)) / 4.0, 1.0 if product.image else -4.0, 0.5]
            )
            weights.append(np.exp(logits) / np.exp(logits).sum())
            ids.append(product.id)
        if not ids:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 3), np.float32), []
        return np.stack(vectors), np.asarray(weights, dtype=np.float32), ids


def checkpoint_hash(checkpoint: str | Path) -> str:
    """SHA-256 of a checkpoint's ``model.safetensors`` (a checkpoint or run directory)."""
    from makevl.models.checkpoint import WEIGHTS, resolve_checkpoint

    return file_sha256(resolve_checkpoint(checkpoint) / WEIGHTS)


def load_checkpoint_encoder(checkpoint: str | Path) -> tuple[Encoder, dict[str, Any], str, dict]:
    """Load a trained MAKE model: ``(encoder, spec, model_hash, run_config_dict)``.

    ``spec["path"]`` is the checkpoint's absolute path: :func:`store_model` copies
    it into the index being built and records the copy instead.
    """
    from makevl.models.checkpoint import load_checkpoint, resolve_checkpoint
    from makevl.models.inference import MakeEncoder

    directory = resolve_checkpoint(checkpoint).resolve()
    model, cfg, vocab = load_checkpoint(directory)
    spec = {"type": "checkpoint", "path": str(directory)}
    encoder = MakeEncoder(model, keywords=vocab.keywords)
    return encoder, spec, checkpoint_hash(directory), cfg.model_dump(mode="json")


def store_model(checkpoint: str | Path, version: Path, model_hash: str) -> dict[str, Any]:
    """Copy a checkpoint into index version ``version`` and return the spec to record.

    The copy must still hash to ``model_hash`` (the weights the catalog was
    encoded with), so a checkpoint replaced mid-build is caught here.
    """
    from makevl.models.checkpoint import WEIGHTS, copy_checkpoint

    folder = copy_checkpoint(checkpoint, version / MODEL_DIR)
    actual = file_sha256(folder / WEIGHTS)
    if actual != model_hash:
        raise ModelMismatchError(
            f"{checkpoint}: the weights changed while the index was built (sha256 "
            f"{actual[:16]}..., the catalog was encoded with {model_hash[:16]}...); build again"
        )
    return {"type": "checkpoint", "path": MODEL_DIR}


def model_folder(spec: dict[str, Any], index_dir: str | Path) -> Path:
    """The index's own copy of its checkpoint; a path outside the index is never followed."""
    path = Path(str(spec.get("path", "")))
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise EncoderSpecError(
            f"{index_dir}: the manifest names its model by the path {str(path)!r}, not a "
            f"folder inside the index (indexes built before makevl copied the model in); "
            "rebuild the index"
        )
    return Path(index_dir) / path


def encoder_from_manifest(manifest: dict[str, Any], index_dir: str | Path) -> tuple[Encoder, str]:
    """Rebuild the encoder that built the index at ``index_dir``: ``(encoder, model_hash)``.

    A checkpoint encoder is loaded from the model folder inside the index, once
    its weights are checked against the manifest's ``model_hash``.
    """
    spec = manifest["encoder"]
    kind = spec.get("type")
    if kind == "hashing":
        encoder = HashingEncoder(int(spec["dim"]))
        return encoder, encoder.model_hash
    if kind == "checkpoint":
        from makevl.models.checkpoint import WEIGHTS, load_checkpoint
        from makevl.models.inference import MakeEncoder

        weights = model_folder(spec, index_dir) / WEIGHTS
        if not weights.is_file():
            raise IndexFileError(f"{weights}: missing from the index; rebuild the index")
        actual = file_sha256(weights)
        if actual != manifest["model_hash"]:
            raise IndexFileError(
                f"{weights}: sha256 {actual[:16]}... is not the model_hash "
                f"{manifest['model_hash'][:16]}... the index was built with; the model was "
                "altered, rebuild the index"
            )
        model, _cfg, vocab = load_checkpoint(weights.parent)
        return MakeEncoder(model, keywords=vocab.keywords), actual
    raise EncoderSpecError(f"unknown encoder type {kind!r} in index manifest")
