"""The MAKE two-tower model (see MAKE.md, "The model").

Query side: its own text encoder E_q -> q, enriched by the keyword memory (KE).
Product side: title encoder E_t, image encoder E_v, a cross-modal fusion
encoder, and Modal Adaptation (MA) weights alpha that mix the title, image and
fused vectors into one product vector p. The product side never reads the
query, so products can be encoded once into an ANN index.

Tokenization and image preprocessing live here too, so training, evaluation,
the index and the server all feed the model the same way.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from makevl.config import LossConfig, ModelConfig, RunConfig
from makevl.data.catalog import Product
from makevl.data.images import ImageError, describe, load_image
from makevl.models.backbones import create_image_encoder, create_text_encoder
from makevl.models.losses import (
    ProductMemoryBank,
    contrastive_loss,
    gather_with_grad,
    keyword_prediction_loss,
)

log = logging.getLogger(__name__)

LOSS_NAMES = (
    "query_product",
    "title_image",
    "query_title",
    "query_image",
    "keyword_query",
    "keyword_prediction",
)
BRANCHES = ("title", "image", "fused")
BLANK_GRAY = (128, 128, 128)


BRANCHES = ("title", "image", "fused")  # order of the Modal Adaptation weights

class FusionEncoder(nn.Module):
    """Transformer layers over [CLS; title tokens; image tokens] -> the CLS output."""

    def __init__(self, title_dim: int, image_dim: int, width: int, layers: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"fusion width {width} (embed_dim) is not divisible by {heads} heads")
        self.title_in = nn.Linear(title_dim, width)
        self.image_in = nn.Linear(image_dim, width)
        self.modality = nn.Embedding(2, width)  # 0: title token, 1: image token
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width,
            heads,
            4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False
        )

    def forward(
        self, title_tokens: torch.Tensor, title_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        batch = title_tokens.shape[0]
        title = self.title_in(title_tokens) + self.modality.weight[0]
        image = self.image_in(image_tokens) + self.modality.weight[1]
        sequence = torch.cat([self.cls.expand(batch, -1, -1).to(title.dtype), title, image], dim=1)
        padding = torch.cat(
            [
                torch.zeros(batch, 1, dtype=torch.bool, device=title.device),
                title_mask == 0,
                torch.zeros(batch, image.shape[1], dtype=torch.bool, device=title.device),
            ],
            dim=1,
        )
        return self.encoder(sequence, src_key_padding_mask=padding)[:, 0]


class MakeModel(nn.Module):
    """MAKE: query tower with keyword memory; title/image/fusion towers mixed by MA.

    ``forward(batch)`` returns the weighted loss and each component. Batch keys:
    query_input_ids/_attention_mask, title_input_ids/_attention_mask, pixel_values
    (or cached image_tokens+image_pooled, title_tokens+title_pooled), product_index
    [B] (equal = same product), optional keyword_targets [B,K] (multi-hot) and
    pseudo_query_input_ids/_attention_mask (keyword pseudo-queries). ``freeze_text``
    freezes the title tower (and the query tower only when it is shared).
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        loss_cfg: LossConfig,
        num_keywords: int = 0,
        image_size: int = 224,
        max_query_tokens: int = 16,
        max_title_tokens: int = 48,
        memory_bank_size: int = 0,
    ) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg
        self.num_keywords = num_keywords
        self.image_size = image_size
        self.max_query_tokens = max_query_tokens
        self.max_title_tokens = max_title_tokens
        d = self.embed_dim = model_cfg.embed_dim

        self.title_encoder = create_text_encoder(model_cfg.text_backbone)
        if model_cfg.shared_query_title_encoder:
            self.query_encoder = self.title_encoder
        else:
            self.query_encoder = create_text_encoder(
                model_cfg.query_backbone or model_cfg.text_backbone
            )
        self.image_encoder = create_image_encoder(
            model_cfg.image_backbone, pretrained_path=model_cfg.image_weights
        )
        title_dim, image_dim = self.title_encoder.hidden_size, self.image_encoder.num_features
        self.fusion = FusionEncoder(
            title_dim, image_dim, d, model_cfg.fusion_layers, model_cfg.fusion_heads
        )

        self.query_proj = nn.Linear(self.query_encoder.hidden_size, d)
        self.title_proj = nn.Linear(title_dim, d)
        self.image_proj = nn.Linear(image_dim, d)
        self.fused_proj = nn.Linear(d, d)
        # Modal Adaptation: per-product weights over (title, image, fused).
        self.gate = (
            nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, 3))
            if model_cfg.modal_adaptation and model_cfg.product_branch == "adaptive"
            else None
        )
        # Keyword Enhancement: a memory of keyword embeddings the query attends over;
        # the same scores q . e_k / tau are the keyword-prediction logits.
        self.keyword_enhanced = model_cfg.keyword_enhancement and num_keywords > 0
        if self.keyword_enhanced:
            self.keyword_embeddings = nn.Parameter(torch.randn(num_keywords, d) * 0.02)
            self.keyword_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # 1 / tau_k
            self.keyword_bias = nn.Parameter(torch.zeros(num_keywords))
            self.keyword_out = nn.Linear(d, d)  # W_ke
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / model_cfg.init_temperature)))
        self.memory_bank = ProductMemoryBank(memory_bank_size, d) if memory_bank_size else None

        if model_cfg.freeze_text:  # the title tower (the query tower too when shared)
            self.title_encoder.requires_grad_(False)
        if model_cfg.freeze_image:
            self.image_encoder.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: RunConfig, num_keywords: int = 0) -> MakeModel:
        return cls(
            cfg.model,
            cfg.loss,
            num_keywords=num_keywords,
            image_size=cfg.data.image_size,
            max_query_tokens=cfg.data.max_query_tokens,
            max_title_tokens=cfg.data.max_title_tokens,
            memory_bank_size=cfg.train.memory_bank_size,
        )

    def train(self, mode: bool = True) -> MakeModel:
        """Frozen towers stay in eval mode (BatchNorm statistics, dropout), as when cached."""
        super().train(mode)
        if self.model_cfg.freeze_text:
            self.title_encoder.eval()
        if self.model_cfg.freeze_image:
            self.image_encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # ---------------------------------------------------------------- preprocessing

    def _tokenize(self, tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        encoded = tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def tokenize_queries(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self._tokenize(self.query_encoder.tokenizer, texts, self.max_query_tokens)

    def tokenize_titles(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self._tokenize(self.title_encoder.tokenizer, texts, self.max_title_tokens)

    def image_transform(self, image: Image.Image) -> torch.Tensor:
        """PIL image -> [3, S, S]: padded to a square on white, resized, normalized."""
        return self.image_encoder.transform(image, self.image_size)

    # ------------------------------------------------------------------- query side

    def keyword_logits(self, q: torch.Tensor) -> torch.Tensor:
        """Scores of every keyword for normalized queries q [B,d] -> [B,K]."""
        keywords = F.normalize(self.keyword_embeddings, dim=-1)
        return self.keyword_log_scale.exp() * q @ keywords.t() + self.keyword_bias

    def _encode_query(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(q', q)``: the keyword-enhanced query vector and the plain one."""
        _, pooled = self.query_encoder(input_ids, attention_mask)
        q = F.normalize(self.query_proj(pooled), dim=-1)
        if not self.keyword_enhanced:
            return q, q
        keywords = F.normalize(self.keyword_embeddings, dim=-1)
        attention = (self.keyword_log_scale.exp() * q @ keywords.t()).softmax(dim=-1)
        enriched = F.normalize(q + self.keyword_out(attention @ keywords), dim=-1)
        return enriched, q

    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._encode_query(input_ids, attention_mask)[0]

    # ----------------------------------------------------------------- product side

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_encoder(pixel_values)

    def encode_title(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.title_encoder(input_ids, attention_mask)

    def encode_product(
        self,
        title_input_ids: torch.Tensor | None,
        title_attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
        image_pooled: torch.Tensor | None = None,
        title_tokens: torch.Tensor | None = None,
        title_pooled: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Product vectors; cached tower outputs, when given, replace the raw inputs."""
        if title_tokens is None or title_pooled is None:
            if title_input_ids is None:
                raise ValueError(
                    "encode_product needs title_input_ids or title_tokens+title_pooled"
                )
            title_tokens, title_pooled = self.encode_title(title_input_ids, title_attention_mask)
        if image_tokens is None or image_pooled is None:
            if pixel_values is None:
                raise ValueError("encode_product needs pixel_values or image_tokens+image_pooled")
            image_tokens, image_pooled = self.encode_image(pixel_values)

        title = F.normalize(self.title_proj(title_pooled), dim=-1)
        image = F.normalize(self.image_proj(image_pooled), dim=-1)
        fused_state = self.fusion(title_tokens, title_attention_mask, image_tokens)
        fused = F.normalize(self.fused_proj(fused_state), dim=-1)
        branches = torch.stack([title, image, fused], dim=1)  # [B, 3, d]

        batch = title.shape[0]
        single = BRANCHES.index(self.model_cfg.product_branch) if (
            self.model_cfg.product_branch != "adaptive") else None
        if single is not None:
            alpha = F.one_hot(torch.tensor(single, device=branches.device), 3).to(
                branches.dtype).expand(batch, 3)
        elif self.gate is None:
            alpha = branches.new_full((batch, 3), 1.0 / 3)
        else:
            alpha = self.gate(branches.flatten(1)).softmax(dim=-1)
        product = F.normalize((alpha.unsqueeze(-1) * branches).sum(1), dim=-1)
        return {"product": product, "alpha": alpha, "title": title, "image": image, "fused": fused}

    # ----------------------------------------------------------------------- losses

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted pre-training loss on one batch; every component is returned too.

        Under torch.distributed every rank gathers the global batch, so the loss
        equals the single-process loss on that batch (ranks need equal batch sizes).
        """
        weights = {name: getattr(self.loss_cfg, name) for name in LOSS_NAMES}
        scale = self.logit_scale.exp().clamp(max=100)
        ids = gather_with_grad(batch["product_index"])
        products = self.encode_product(
            batch.get("title_input_ids"),
            batch["title_attention_mask"],
            pixel_values=batch.get("pixel_values"),
            image_tokens=batch.get("image_tokens"),
            image_pooled=batch.get("image_pooled"),
            title_tokens=batch.get("title_tokens"),
            title_pooled=batch.get("title_pooled"),
        )
        product = gather_with_grad(products["product"])

        need_query = any(
            weights[n]
            for n in ("query_product", "query_title", "query_image", "keyword_prediction")
        )
        if need_query:
            q_local, q_plain = self._encode_query(
                batch["query_input_ids"], batch["query_attention_mask"]
            )
            q = gather_with_grad(q_local)

        losses: dict[str, torch.Tensor] = {}
        if weights["query_product"]:
            extra_vectors = extra_ids = None
            if self.memory_bank is not None and len(self.memory_bank):
                extra_vectors, extra_ids = self.memory_bank.negatives()
            losses["query_product"] = contrastive_loss(
                q, product, scale, ids, extra_vectors, extra_ids
            )
        if weights["title_image"] or weights["query_title"] or weights["query_image"]:
            title, image = gather_with_grad(products["title"]), gather_with_grad(products["image"])
        if weights["title_image"]:
            losses["title_image"] = contrastive_loss(title, image, scale, ids)
        if weights["query_title"]:
            losses["query_title"] = contrastive_loss(q, title, scale, ids)
        if weights["query_image"]:
            losses["query_image"] = contrastive_loss(q, image, scale, ids)
        if weights["keyword_query"] and "pseudo_query_input_ids" in batch:
            pseudo = self.encode_query(
                batch["pseudo_query_input_ids"], batch["pseudo_query_attention_mask"]
            )
            losses["keyword_query"] = contrastive_loss(
                gather_with_grad(pseudo), product, scale, ids
            )
        if weights["keyword_prediction"] and self.keyword_enhanced and "keyword_targets" in batch:
            logits = gather_with_grad(self.keyword_logits(q_plain))
            targets = gather_with_grad(batch["keyword_targets"])
            losses["keyword_prediction"] = keyword_prediction_loss(logits, targets)
        if not losses:
            raise ValueError(
                "no loss to compute: every loss weight is zero or its inputs are missing"
            )

        if self.training and self.memory_bank is not None:
            self.memory_bank.push(product.detach(), ids)
        total = sum(weights[name] * value for name, value in losses.items())
        return {"loss": total, **losses, "logit_scale": scale.detach()}

    # ------------------------------------------------------ batched encoding (eval/index)

    @torch.no_grad()
    def encode_queries(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Query vectors [N, d] float32, L2-normalized."""
        was_training = self.training
        self.eval()
        try:
            out = [np.zeros((0, self.embed_dim), dtype=np.float32)]
            for start in range(0, len(texts), batch_size):
                tokens = self.tokenize_queries(texts[start : start + batch_size])
                q = self.encode_query(**{k: v.to(self.device) for k, v in tokens.items()})
                out.append(q.float().cpu().numpy())
            return np.concatenate(out)
        finally:
            self.train(was_training)

    def _product_pixels(
        self, product: Product, on_error: Callable[[Product, Exception], None]
    ) -> torch.Tensor:
        try:
            image = load_image(product.image)
        except (ImageError, OSError) as exc:
            on_error(product, exc)
            image = Image.new("RGB", (self.image_size, self.image_size), BLANK_GRAY)
        return self.image_transform(image)

    @torch.no_grad()
    def encode_products(
        self,
        products: Iterable[Product],
        batch_size: int = 64,
        on_error: Callable[[Product, Exception], None] | None = None,
        branches: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, list[str]] | dict[str, Any]:
        """Product vectors [N, d], MA weights [N, 3] and ids, streaming over ``products``.

        A product whose image cannot be used is encoded with a blank gray image
        and reported through ``on_error(product, exc)`` (default: a log warning).
        ``branches=True`` returns a dict instead: "product", "alpha", "title",
        "image", "fused" arrays and "ids" (for baselines built on one branch).
        """
        on_error = on_error or _warn_image_error
        keys = ("product", "alpha", "title", "image", "fused")
        parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
        ids: list[str] = []
        was_training = self.training
        self.eval()
        try:
            for chunk in _chunks(products, batch_size):
                titles = self.tokenize_titles([p.title for p in chunk])
                pixels = torch.stack([self._product_pixels(p, on_error) for p in chunk])
                out = self.encode_product(
                    titles["input_ids"].to(self.device),
                    titles["attention_mask"].to(self.device),
                    pixel_values=pixels.to(self.device),
                )
                for key in keys:
                    parts[key].append(out[key].float().cpu().numpy())
                ids.extend(p.id for p in chunk)
        finally:
            self.train(was_training)
        empty = {key: (0, 3 if key == "alpha" else self.embed_dim) for key in keys}
        arrays = {
            key: np.concatenate(rows) if rows else np.zeros(empty[key], np.float32)
            for key, rows in parts.items()
        }
        if branches:
            return {**arrays, "ids": ids}
        return arrays["product"], arrays["alpha"], ids


def _warn_image_error(product: Product, exc: Exception) -> None:
    log.warning(
        "product %s (%s): image %s unusable, encoded with a blank image: %s",
        product.id,
        product.where,
        describe(product.image),
        exc,
    )


def _chunks(items: Iterable[Product], size: int) -> Iterator[list[Product]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk
