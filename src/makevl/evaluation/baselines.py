"""Baselines MAKE has to beat, as systems for :class:`RetrievalEvaluator`.

- :class:`BM25System`: lexical BM25 over titles (the ``bm25s`` library).
- :class:`ZeroShotMiniLMSystem`: the off-the-shelf all-MiniLM-L6-v2 bi-encoder,
  query vs title, no training.
- :class:`StaticFusionSystem`: product vector = fixed-weight sum of unit title and
  image vectors, the way vector engines fuse multimodal fields (Marqo's
  ``multimodal_combination``); MAKE's Modal Adaptation learns these weights per
  product instead.
- :class:`HybridSystem`: not a baseline but MAKE extended: MAKE's ranking fused with
  BM25 over titles and keywords, exactly as the index's ``mode=hybrid`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from makevl.data.catalog import Product
from makevl.data.text import bm25_tokens
from makevl.evaluation.evaluator import EmbeddingSystem
from makevl.evaluation.metrics import top_k
from makevl.index.lexical import Fusion, LexicalIndex
from makevl.spelling import SpellingCorrector


class BM25System:
    """BM25 over product titles. Ties (e.g. no shared term) keep pool order."""

    def __init__(
        self, name: str = "bm25", k1: float = 1.5, b: float = 0.75, query_block: int = 256
    ):
        self.name = name
        self.k1 = k1
        self.b = b
        self.query_block = query_block

    def rank(self, queries: list[str], pool: list[Product], k: int) -> list[list[str]]:
        import bm25s

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build
        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        retriever.index([bm25_tokens(p.title) for p in pool], show_progress=False)
        ids = [p.id for p in pool]
        rankings: list[list[str]] = []
        for start in range(0, len(queries), self.query_block):
            block = queries[start : start + self.query_block]
            # Full score rows, ranked by our own top_k so ties break by pool order.
            scores = np.stack(
                [
                    retriever.get_scores_from_ids(retriever.get_tokens_ids(bm25_tokens(q)))
                    for q in block
                ]
            )
            rankings += [[ids[i] for i in row] for row in top_k(scores, k)]
        return rankings


class MiniLMEncoder:
    """Sentence embeddings from a text tower (masked-mean pooling), unit norm.

    Defaults to the ``"minilm"`` tower (all-MiniLM-L6-v2, offline), loaded and
    pooled exactly as MAKE's own text tower. Texts are batched in length order
    to waste less padding.
    """

    def __init__(
        self,
        model_path: str | None = None,
        batch_size: int = 64,
        max_length: int = 64,
        device: str = "cpu",
    ) -> None:
        from makevl.models.backbones import create_text_tower

        self.tower = create_text_tower(model_path or "minilm").to(device).eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from makevl.models.inference import tokenize

        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.tower.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                batch = tokenize(self.tower.tokenizer, [texts[i] for i in rows], self.max_length)
                ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
                _, pooled = self.tower(ids, mask)
                out[rows] = F.normalize(pooled, dim=-1).float().cpu().numpy()
        return out


class ZeroShotMiniLMSystem(EmbeddingSystem):
    """Query vs title with an untrained-on-our-data MiniLM bi-encoder."""

    def __init__(self, encoder: MiniLMEncoder | None = None, name: str = "minilm-zero-shot"):
        self.encoder = encoder or MiniLMEncoder()
        super().__init__(
            name,
            self.encoder.encode,
            lambda products: self.encoder.encode([p.title for p in products]),
        )


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class StaticFusionSystem(EmbeddingSystem):
    """Product vector = normalize(w_title * t + w_image * v) with t, v unit vectors.

    ``encode_titles`` takes title strings, ``encode_images`` takes products (an
    image may be a path, bytes or missing); both must map into the space of
    ``encode_queries``, e.g. the towers of a CLIP-style model.
    """

    def __init__(
        self,
        encode_queries: Callable[[list[str]], np.ndarray],
        encode_titles: Callable[[list[str]], np.ndarray],
        encode_images: Callable[[list[Product]], np.ndarray],
        weights: tuple[float, float] = (0.5, 0.5),
        name: str | None = None,
    ) -> None:
        self.encode_titles = encode_titles
        self.encode_images = encode_images
        self.weights = weights
        name = name or f"static-fusion(title={weights[0]:g},image={weights[1]:g})"
        super().__init__(name, encode_queries, self.fuse)

    def fuse(self, products: list[Product]) -> np.ndarray:
        titles = _unit(self.encode_titles([p.title for p in products]))
        images = _unit(self.encode_images(products))
        w_title, w_image = self.weights
        return _unit(w_title * titles + w_image * images)


def _cache_last(encode: Callable) -> Callable:
    """Remember the last call's result, so a weight grid encodes each pool once."""
    last: dict = {}

    def cached(items):
        key = tuple(p.id if isinstance(p, Product) else p for p in items)
        if last.get("key") != key:
            last.update(key=key, value=encode(items))
        return last["value"]

    return cached


def static_fusion_grid(
    encode_queries: Callable[[list[str]], np.ndarray],
    encode_titles: Callable[[list[str]], np.ndarray],
    encode_images: Callable[[list[Product]], np.ndarray],
    title_weights: Sequence[float] = (0.25, 0.5, 0.75),
    prefix: str = "static-fusion",
) -> list[StaticFusionSystem]:
    """One system per title weight (image weight = 1 - title weight), sharing encodings."""
    encode_titles, encode_images = _cache_last(encode_titles), _cache_last(encode_images)
    return [
        StaticFusionSystem(
            encode_queries,
            encode_titles,
            encode_images,
            (w, 1.0 - w),
            name=f"{prefix}(title={w:g},image={1.0 - w:g})",
        )
        for w in title_weights
    ]


class HybridSystem:
    """A vector system (MAKE) and the index's BM25 channel (titles and keywords), fused by
    reciprocal rank: what ``makevl search --mode hybrid`` and the server's ``mode=hybrid`` rank.
    BM25 reads the query as MAKE's spelling corrector leaves it (``spelling``), as there."""

    def __init__(
        self,
        vector: EmbeddingSystem,
        fusion: Fusion | None = None,
        name: str = "hybrid",
        spelling: SpellingCorrector | None = None,
    ):
        self.vector = vector
        self.fusion = fusion or Fusion()
        self.name = name
        self.spelling = spelling

    def rank(self, queries: list[str], pool: list[Product], k: int) -> list[list[str]]:
        depth = max(k, self.fusion.depth)
        vector = self.vector.rank(queries, pool, depth)
        texts = self.spelling.correct_all(queries) if self.spelling is not None else queries
        lexical = LexicalIndex.from_products(pool, np.arange(len(pool))).search(texts, depth)
        ids = [p.id for p in pool]
        return [
            [pid for pid, _ in self.fusion.fuse(ranking, [ids[row] for row in rows])[:k]]
            for ranking, (rows, _) in zip(vector, lexical)
        ]
