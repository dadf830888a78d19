"""The MAKE two-tower model (see MAKE.md, "The model"): tensors in, vectors out.

Query side: its own text tower E_q -> q, enriched by the keyword memory (KE).
Product side: title tower E_t, image tower E_v, a cross-modal fusion encoder,
and Modal Adaptation (MA) weights that mix the title, image and fused vectors
into one product vector p. The product side never reads the query, so products
can be encoded once into an ANN index.

The training loss lives in :mod:`makevl.models.objective`; tokenizing, image
loading and batched numpy encoding in :mod:`makevl.models.inference`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from makevl.config import ModelConfig, RunConfig
from makevl.models.backbones import create_image_tower, create_text_tower, keep_first_layers

if TYPE_CHECKING:
    from makevl.spelling import SpellingCorrector

BRANCHES = ("title", "image", "fused")  # order of the Modal Adaptation weights


def normalize_blocks(pooled: torch.Tensor, widths: list[int]) -> torch.Tensor:
    """Layer-normalise each block of ``pooled`` [B, sum(widths)] on its own.

    The pooled image vector joins parts of very different scale and width: 1,280
    averaged CNN activations and 251 square-rooted histogram bins. A linear layer
    trained by Adam moves each weight by about the same step, so a part whose
    values are small or few steers the vector slowly; after normalisation each
    part starts on an equal footing (fashion-mini, sparse titles: val NDCG@10
    0.831 -> 0.849, docs/RESULTS.md).
    """
    if sum(widths) != pooled.shape[-1]:
        raise ValueError(f"blocks of widths {widths} do not tile a vector of {pooled.shape[-1]}")
    parts = pooled.split(widths, dim=-1)
    return torch.cat([F.layer_norm(part, part.shape[-1:]) for part in parts], dim=-1)


class FusionEncoder(nn.Module):
    """Transformer layers over [CLS; title tokens; image tokens] -> the CLS output.

    With ``pooled_image_dim`` the image tower's pooled vector joins as one more
    image token: it carries what the tokens do not (early stages, colour
    histograms), which the fused vector would otherwise never see.
    """

    def __init__(
        self,
        title_dim: int,
        image_dim: int,
        width: int,
        layers: int,
        heads: int,
        pooled_image_dim: int = 0,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"fusion width {width} (embed_dim) is not divisible by {heads} heads")
        self.title_in = nn.Linear(title_dim, width)
        self.image_in = nn.Linear(image_dim, width)
        self.pooled_image_in = nn.Linear(pooled_image_dim, width) if pooled_image_dim else None
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
        self,
        title_tokens: torch.Tensor,
        title_mask: torch.Tensor,
        image_tokens: torch.Tensor,
        image_pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch = title_tokens.shape[0]
        title = self.title_in(title_tokens) + self.modality.weight[0]
        image = self.image_in(image_tokens)
        if self.pooled_image_in is not None:
            if image_pooled is None:
                raise ValueError("this fusion encoder also reads the image tower's pooled vector")
            image = torch.cat([image, self.pooled_image_in(image_pooled).unsqueeze(1)], dim=1)
        image = image + self.modality.weight[1]
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

    ``encode_query`` and ``encode_product`` map token ids and pixels (or cached
    tower outputs) to unit vectors. ``freeze_text`` freezes the title tower (and
    the query tower only when it is shared). The attribute names ``*_encoder``
    are the checkpoint's weight names, so they stay as they are.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        num_keywords: int = 0,
        image_size: int = 224,
        max_query_tokens: int = 16,
        max_title_tokens: int = 48,
    ) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.num_keywords = num_keywords
        self.image_size = image_size
        self.max_query_tokens = max_query_tokens
        self.max_title_tokens = max_title_tokens
        d = self.embed_dim = model_cfg.embed_dim

        self.title_encoder = create_text_tower(model_cfg.text_backbone)
        if model_cfg.shared_query_title_encoder:
            if model_cfg.query_layers is not None:
                raise ValueError(
                    "model.query_layers needs a query tower of its own "
                    "(model.shared_query_title_encoder=false)"
                )
            self.query_encoder = self.title_encoder
        else:
            self.query_encoder = create_text_tower(
                model_cfg.query_backbone or model_cfg.text_backbone
            )
            if model_cfg.query_layers is not None:
                keep_first_layers(self.query_encoder, model_cfg.query_layers)
        self.image_encoder = (
            create_image_tower(model_cfg.image_backbone, weights=model_cfg.image_weights)
            .pool_stages(model_cfg.image_pooled_stages)
            .colour_histogram(model_cfg.image_colour_levels)
        )
        title_dim, image_dim = self.title_encoder.hidden_size, self.image_encoder.num_features
        pooled_dim = self.image_encoder.pooled_features
        self.fusion = FusionEncoder(
            title_dim,
            image_dim,
            d,
            model_cfg.fusion_layers,
            model_cfg.fusion_heads,
            pooled_image_dim=pooled_dim if pooled_dim != image_dim else 0,  # only when it adds
        )

        self.query_proj = nn.Linear(self.query_encoder.hidden_size, d)
        self.title_proj = nn.Linear(title_dim, d)
        self.image_proj = nn.Linear(self.image_encoder.pooled_features, d)
        self.fused_proj = nn.Linear(d, d)
        # Modal Adaptation: per-product weights over (title, image, fused).
        self.gate = (
            nn.Sequential(nn.Linear(3 * d, d), nn.GELU(), nn.Linear(d, 3))
            if model_cfg.modal_adaptation and model_cfg.product_branch == "adaptive"
            else None
        )
        if self.gate is not None:
            # Divides the gate's logits in eval mode only: fit on the val split at
            # each validation (training/calibration.py); training uses the raw gate.
            self.register_buffer("gate_temperature", torch.tensor(1.0))
        # Keyword Enhancement: a memory of keyword embeddings the query attends over;
        # the same scores q . e_k / tau are the keyword-prediction logits.
        self.keyword_enhanced = model_cfg.keyword_enhancement and num_keywords > 0
        if self.keyword_enhanced:
            self.keyword_embeddings = nn.Parameter(torch.randn(num_keywords, d) * 0.02)
            self.keyword_log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # 1 / tau_k
            self.keyword_bias = nn.Parameter(torch.zeros(num_keywords))
            self.keyword_out = nn.Linear(d, d)  # W_ke
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / model_cfg.init_temperature)))
        # Query preprocessing that travels with the weights, like the tokenizer: the
        # catalog-vocabulary spelling corrector (model.spelling_correction), set by the
        # trainer and by load_checkpoint; not a module, so not in the weights file.
        self.spelling: SpellingCorrector | None = None

        if model_cfg.freeze_text:  # the title tower (the query tower too when shared)
            self.title_encoder.requires_grad_(False)
        if model_cfg.freeze_image:
            self.image_encoder.requires_grad_(False)
        if model_cfg.freeze_word_embeddings:
            for tower in {self.query_encoder, self.title_encoder}:
                tower.model.get_input_embeddings().requires_grad_(False)

    @classmethod
    def from_config(cls, cfg: RunConfig, num_keywords: int = 0) -> MakeModel:
        return cls(
            cfg.model,
            num_keywords=num_keywords,
            image_size=cfg.data.image_size,
            max_query_tokens=cfg.data.max_query_tokens,
            max_title_tokens=cfg.data.max_title_tokens,
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

    # ------------------------------------------------------------------- query side

    def keyword_logits(self, q: torch.Tensor) -> torch.Tensor:
        """Scores of every keyword for normalized queries q [B,d] -> [B,K]."""
        keywords = F.normalize(self.keyword_embeddings, dim=-1)
        return self.keyword_log_scale.exp() * q @ keywords.t() + self.keyword_bias

    def encode_query_pair(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q', q)``: the keyword-enhanced query vector (the one searched with) and the
        plain one (the one the keyword-prediction loss scores)."""
        _, pooled = self.query_encoder(input_ids, attention_mask)
        q = F.normalize(self.query_proj(pooled), dim=-1)
        if not self.keyword_enhanced:
            return q, q
        keywords = F.normalize(self.keyword_embeddings, dim=-1)
        attention = self.keyword_attention(q, keywords)
        enriched = F.normalize(q + self.keyword_out(attention @ keywords), dim=-1)
        return enriched, q

    def keyword_attention(
        self, q: torch.Tensor, keywords: torch.Tensor | None = None
    ) -> torch.Tensor:
        """How much each keyword of the memory KE adds to normalized queries q [B,d] -> [B,K]
        (rows sum to 1). ``keywords``: the normalized memory, when the caller has it (one
        normalization node in the graph, so training is bit-identical to computing it inline)."""
        if keywords is None:
            keywords = F.normalize(self.keyword_embeddings, dim=-1)
        return (self.keyword_log_scale.exp() * q @ keywords.t()).softmax(dim=-1)

    def encode_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encode_query_pair(input_ids, attention_mask)[0]

    # ----------------------------------------------------------------- product side

    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image_encoder(pixel_values)

    def encode_title(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.title_encoder(input_ids, attention_mask)

    def mix_branches(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Branch vectors [B, 3, d] -> the product vector [B, d] and MA's weights [B, 3]
        (equal weights without a gate; the gate's temperature in eval mode only)."""
        if self.gate is None:
            weights = stacked.new_full((len(stacked), 3), 1.0 / 3)
        else:
            logits = self.gate(stacked.flatten(1))
            if not self.training:
                logits = logits / self.gate_temperature
            weights = logits.softmax(dim=-1)
        return F.normalize((weights.unsqueeze(-1) * stacked).sum(1), dim=-1), weights

    @property
    def product_branches(self) -> tuple[str, ...]:
        """The branches the product vector is made of: all three under MA, else one."""
        branch = self.model_cfg.product_branch
        return BRANCHES if branch == "adaptive" else (branch,)

    def encode_product(
        self,
        title_input_ids: torch.Tensor | None,
        title_attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_tokens: torch.Tensor | None = None,
        image_pooled: torch.Tensor | None = None,
        title_tokens: torch.Tensor | None = None,
        title_pooled: torch.Tensor | None = None,
        branches: tuple[str, ...] = BRANCHES,
    ) -> dict[str, torch.Tensor]:
        """Product vectors, one per branch, their MA mix ``product`` and ``modality_weights``
        [B, 3] over ``BRANCHES``; cached tower outputs, when given, replace the raw inputs.

        Only ``branches`` and those the product vector is made of are computed and
        returned, so a single-branch model (a baseline) trains without running the
        towers and fusion layers it never uses.
        """
        wanted = set(branches) | set(self.product_branches)
        if wanted & {"title", "fused"} and (title_tokens is None or title_pooled is None):
            if title_input_ids is None:
                raise ValueError(
                    "encode_product needs title_input_ids or title_tokens+title_pooled"
                )
            title_tokens, title_pooled = self.encode_title(title_input_ids, title_attention_mask)
        if wanted & {"image", "fused"} and (image_tokens is None or image_pooled is None):
            if pixel_values is None:
                raise ValueError("encode_product needs pixel_values or image_tokens+image_pooled")
            image_tokens, image_pooled = self.encode_image(pixel_values)

        out: dict[str, torch.Tensor] = {}
        if "title" in wanted:
            out["title"] = F.normalize(self.title_proj(title_pooled), dim=-1)
        if "image" in wanted:
            pooled = image_pooled
            if self.model_cfg.image_block_norm:
                pooled = normalize_blocks(pooled, self.image_encoder.pooled_blocks())
            out["image"] = F.normalize(self.image_proj(pooled), dim=-1)
        if "fused" in wanted:
            fused_state = self.fusion(title_tokens, title_attention_mask, image_tokens, image_pooled)
            out["fused"] = F.normalize(self.fused_proj(fused_state), dim=-1)

        if len(self.product_branches) == 1:
            (branch,) = self.product_branches
            vector = out[branch]
            weights = F.one_hot(torch.tensor(BRANCHES.index(branch), device=vector.device), 3)
            out["modality_weights"] = weights.to(vector.dtype).expand(len(vector), 3)
            out["product"] = vector
            return out
        stacked = torch.stack([out[name] for name in BRANCHES], dim=1)  # [B, 3, d]
        out["product"], out["modality_weights"] = self.mix_branches(stacked)
        return out
