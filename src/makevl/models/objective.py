"""The MAKE pre-training objective: named loss terms, weighted by the loss config.

Each term is one small function registered under the name of its weight in
:class:`~makevl.config.LossConfig`; :class:`MakeObjective` builds the terms
whose weight is non-zero and sums ``weight * term``. Adding a loss term means
one function here and one weight in the config.

Terms read a :class:`LossInputs`, which encodes what they ask for once per
batch. Under torch.distributed every vector is gathered across ranks, so the
loss equals the single-process loss on the global batch (ranks need equal
batch sizes). A term may also own frozen state built once from the model (a
teacher tower), kept in the objective, never in the model or its checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from makevl.config import LossConfig
from makevl.models.backbones import create_text_tower
from makevl.models.losses import (
    ProductMemoryBank,
    contrastive_loss,
    gather_with_grad,
    keyword_prediction_loss,
)
from makevl.models.make import BRANCHES, MakeModel

# A term returns its loss, or None when the batch lacks its inputs.
LossTerm = Callable[["LossInputs"], "torch.Tensor | None"]
LOSS_TERMS: dict[str, LossTerm] = {}
READS_QUERY: set[str] = set()  # terms that read the query vectors
READS_BRANCHES: dict[str, tuple[str, ...]] = {}  # term -> product branches it reads on their own
TERM_STATE: dict[str, Callable[[MakeModel], nn.Module]] = {}  # term -> builds its state


def register_loss_term(
    name: str,
    reads_query: bool = False,
    state: Callable[[MakeModel], nn.Module] | None = None,
    reads_branches: tuple[str, ...] = (),
) -> Callable[[LossTerm], LossTerm]:
    """Register a loss term under ``name``, the name of its weight in ``LossConfig``.

    ``reads_query``: the term uses ``LossInputs.query``/``plain_query``; queries are
    then encoded right after the products, so dropout draws its random numbers in
    the same order whichever query terms are on. ``state(model)`` builds what the
    term keeps between batches (read as ``LossInputs.state[name]``), only when the
    term is on. ``reads_branches``: the product branches (``"title"``, ``"image"``)
    the term reads apart from the product vector; no term on, no branch computed.
    """

    def register(term: LossTerm) -> LossTerm:
        if name in LOSS_TERMS:
            raise ValueError(f"loss term {name!r} is already registered")
        LOSS_TERMS[name] = term
        if reads_query:
            READS_QUERY.add(name)
        if state is not None:
            TERM_STATE[name] = state
        READS_BRANCHES[name] = reads_branches
        return term

    return register


def build_loss_terms(weights: Mapping[str, float]) -> dict[str, tuple[float, LossTerm]]:
    """``name -> (weight, term)`` for every non-zero weight, in the order given."""
    unknown = sorted(set(weights) - set(LOSS_TERMS))
    if unknown:
        raise ValueError(f"unknown loss term(s) {unknown}; registered: {', '.join(LOSS_TERMS)}")
    return {name: (weight, LOSS_TERMS[name]) for name, weight in weights.items() if weight}


class LossInputs:
    """One batch as the terms see it; each vector is encoded (and gathered) once, on demand.

    Batch keys: query_input_ids/_attention_mask, title_input_ids/_attention_mask,
    pixel_values (or cached image_tokens+image_pooled, title_tokens+title_pooled),
    product_index [B] (equal = same product), optional keyword_targets [B,K]
    (multi-hot) and pseudo_query_input_ids/_attention_mask (keyword pseudo-queries).
    """

    def __init__(
        self,
        model: MakeModel,
        batch: dict[str, torch.Tensor],
        memory_bank: ProductMemoryBank | None = None,
        encode_queries: bool = False,
        state: Mapping[str, nn.Module] | None = None,
        branches: tuple[str, ...] = BRANCHES,
    ) -> None:
        self.model = model
        self.batch = batch
        self.memory_bank = memory_bank
        self.state = state or {}
        self.scale = model.logit_scale.exp().clamp(max=100)
        self.ids = gather_with_grad(batch["product_index"])
        self.products = model.encode_product(
            batch.get("title_input_ids"),
            batch["title_attention_mask"],
            pixel_values=batch.get("pixel_values"),
            image_tokens=batch.get("image_tokens"),
            image_pooled=batch.get("image_pooled"),
            title_tokens=batch.get("title_tokens"),
            title_pooled=batch.get("title_pooled"),
            branches=branches,
        )
        self.product = gather_with_grad(self.products["product"])
        if encode_queries:
            self._queries  # noqa: B018 - encode now, see register_loss_term

    @cached_property
    def _queries(self) -> tuple[torch.Tensor, torch.Tensor]:
        enriched, plain = self.model.encode_query_pair(
            self.batch["query_input_ids"], self.batch["query_attention_mask"]
        )
        return gather_with_grad(enriched), plain

    @property
    def query(self) -> torch.Tensor:
        """Keyword-enhanced query vectors, gathered."""
        return self._queries[0]

    @property
    def plain_query(self) -> torch.Tensor:
        """Query vectors before keyword enhancement, this rank only."""
        return self._queries[1]

    def _branch(self, name: str) -> torch.Tensor:
        if name not in self.products:
            raise KeyError(
                f"a loss term reads the {name} branch, which this model does not compute "
                f"for it: register the term with reads_branches=({name!r},)"
            )
        return gather_with_grad(self.products[name])

    @cached_property
    def title(self) -> torch.Tensor:
        return self._branch("title")

    @cached_property
    def image(self) -> torch.Tensor:
        return self._branch("image")


# ------------------------------------------------------------------------- terms


@register_loss_term("query_product", reads_query=True)
def query_product(x: LossInputs) -> torch.Tensor:
    """Query vs MA-mixed product; memory-bank vectors are extra negatives."""
    extra_vectors = extra_ids = None
    if x.memory_bank is not None and len(x.memory_bank):
        extra_vectors, extra_ids = x.memory_bank.negatives()
    return contrastive_loss(x.query, x.product, x.scale, x.ids, extra_vectors, extra_ids)


@register_loss_term("title_image", reads_branches=("title", "image"))
def title_image(x: LossInputs) -> torch.Tensor:
    """Aligns the title and image branches of the same product."""
    return contrastive_loss(x.title, x.image, x.scale, x.ids)


@register_loss_term("query_title", reads_query=True, reads_branches=("title",))
def query_title(x: LossInputs) -> torch.Tensor:
    return contrastive_loss(x.query, x.title, x.scale, x.ids)


@register_loss_term("query_image", reads_query=True, reads_branches=("image",))
def query_image(x: LossInputs) -> torch.Tensor:
    return contrastive_loss(x.query, x.image, x.scale, x.ids)


@register_loss_term("keyword_query")
def keyword_query(x: LossInputs) -> torch.Tensor | None:
    """Keyword pseudo-queries vs their product (teaches short keyword queries)."""
    if "pseudo_query_input_ids" not in x.batch:
        return None
    pseudo = x.model.encode_query(
        x.batch["pseudo_query_input_ids"], x.batch["pseudo_query_attention_mask"]
    )
    return contrastive_loss(gather_with_grad(pseudo), x.product, x.scale, x.ids)


@register_loss_term("keyword_prediction", reads_query=True)
def keyword_prediction(x: LossInputs) -> torch.Tensor | None:
    """The plain query predicts its product's keywords (multi-label)."""
    if not x.model.keyword_enhanced or "keyword_targets" not in x.batch:
        return None
    logits = gather_with_grad(x.model.keyword_logits(x.plain_query))
    targets = gather_with_grad(x.batch["keyword_targets"])
    return keyword_prediction_loss(logits, targets)


class FrozenTextTower(nn.Module):
    """A text tower that never trains: no gradients, always in eval mode (no dropout)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.tower = create_text_tower(name).requires_grad_(False).eval()

    def train(self, mode: bool = True) -> FrozenTextTower:
        return self  # stays in eval mode

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.tower(input_ids, attention_mask)[1].float(), dim=-1)


DISTILLATION_TEMPERATURE = 0.05  # as in SimCSE-style contrastive distillation


def _pretrained_query_tower(model: MakeModel) -> FrozenTextTower:
    """The query tower as loaded before training (its backbone loaded afresh by name)."""
    cfg = model.model_cfg
    return FrozenTextTower(cfg.query_backbone or cfg.text_backbone)


@register_loss_term("query_distillation", reads_query=True, state=_pretrained_query_tower)
def query_distillation(x: LossInputs) -> torch.Tensor:
    """Keeps the query tower's sense of which queries are alike, as pretrained.

    For each query, the softmax over its cosine similarities to the batch's
    other queries (temperature ``DISTILLATION_TEMPERATURE``) under the frozen
    pretrained tower is the target for the same softmax under the fine-tuned
    plain query vectors (KL divergence). It compares geometry, so the
    projection to ``embed_dim`` needs no counterpart. A pretrained tower that
    knew "sneakers" ~ "sports shoes" keeps pulling the fine-tuned one that way.
    Meaningful with a pretrained backbone; with ``tiny`` the teacher is random.
    """
    teacher = x.state["query_distillation"](
        x.batch["query_input_ids"], x.batch["query_attention_mask"]
    )
    student = x.plain_query.float()
    others = ~torch.eye(len(student), dtype=torch.bool, device=student.device)

    def log_softmax(vectors: torch.Tensor) -> torch.Tensor:
        scores = vectors @ vectors.t() / DISTILLATION_TEMPERATURE
        return scores.masked_fill(~others, float("-inf")).log_softmax(dim=-1)[others]

    target = log_softmax(teacher)
    return F.kl_div(log_softmax(student), target, log_target=True, reduction="sum") / len(student)


# --------------------------------------------------------------------- objective


class MakeObjective(nn.Module):
    """The weighted sum of the loss terms, around the model (the module DDP wraps).

    ``forward(batch)`` returns ``{"loss": total, <term>: value..., "logit_scale"}``.
    The memory bank of product vectors lives here: it is training state, not model.
    """

    def __init__(self, model: MakeModel, loss_cfg: LossConfig, memory_bank_size: int = 0) -> None:
        super().__init__()
        self.model = model
        self.terms = build_loss_terms(loss_cfg.model_dump())
        self.reads_query = any(name in READS_QUERY for name in self.terms)
        read = {branch for name in self.terms for branch in READS_BRANCHES[name]}
        self.branches = tuple(branch for branch in BRANCHES if branch in read)
        self.term_state = nn.ModuleDict(
            {name: TERM_STATE[name](model) for name in self.terms if name in TERM_STATE}
        )
        self.memory_bank = (
            ProductMemoryBank(memory_bank_size, model.embed_dim) if memory_bank_size else None
        )

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = LossInputs(
            self.model, batch, self.memory_bank, self.reads_query, self.term_state, self.branches
        )
        losses: dict[str, torch.Tensor] = {}
        for name, (_, term) in self.terms.items():
            value = term(inputs)
            if value is not None:
                losses[name] = value
        if not losses:
            raise ValueError(
                "no loss to compute: every loss weight is zero or its inputs are missing"
            )
        if self.model.training and self.memory_bank is not None:
            self.memory_bank.push(inputs.product.detach(), inputs.ids)
        total = sum(self.terms[name][0] * value for name, value in losses.items())
        return {"loss": total, **losses, "logit_scale": inputs.scale.detach()}
