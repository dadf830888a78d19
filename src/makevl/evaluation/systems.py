"""Every evaluated system by name: baselines, MAKE and its ablations.

``makevl eval`` and ``makevl report`` both pick systems from :data:`SYSTEMS`,
so a new baseline is one :class:`SystemSpec` here (plus its code, usually in
``baselines.py``) and both commands know it. A spec either builds ready-made
systems (``build``) or names the config overrides of a MAKE variant that
``makevl report`` trains itself (``train_overrides``).

The trained baselines are MAKE models with parts switched off, so "trained the
same way" holds by construction:
- ``clip-query-image``: product vector = image branch, query-product loss only.
- ``text-bi-encoder``: product vector = title branch, query-product loss only.
- ``static-fusion``: MAKE's own title and image branch vectors mixed with fixed
  weights, as vector engines do, instead of Modal Adaptation's learned ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from makevl.config import LossConfig
from makevl.data.catalog import Product
from makevl.evaluation.evaluator import EmbeddingSystem, RankingSystem

# Keyword Enhancement off: no keyword memory, pseudo-queries or keyword prediction.
NO_KE = ("model.keyword_enhancement=false", "loss.keyword_query=0", "loss.keyword_prediction=0")
# Only the main retrieval loss, for the single-branch baselines.
MAIN_LOSS_ONLY = ("loss.title_image=0", "loss.query_title=0", "loss.query_image=0", *NO_KE)


@dataclass(frozen=True)
class SystemSpec:
    name: str
    group: str  # "make", "ablation", "baseline" (claims compare MAKE with every baseline)
    description: str
    # Builds the systems to score from a trained MAKE model (None when not needed).
    build: Callable[[Any], list[RankingSystem]] | None = None
    needs_model: bool = False  # build needs a MAKE model: a checkpoint, or the report's "make"
    train_overrides: tuple[str, ...] | None = None  # a MAKE variant the report trains
    # False: never run by `makevl report`. A trained variant runs without --systems
    # only where it changes MAKE's config (report/run.py report_systems).
    in_report: bool = True

    @property
    def trained(self) -> bool:
        return self.train_overrides is not None


def _bm25(model: Any) -> list[RankingSystem]:
    from makevl.evaluation.baselines import BM25System

    return [BM25System()]


def _minilm(model: Any) -> list[RankingSystem]:
    from makevl.evaluation.baselines import ZeroShotMiniLMSystem

    return [ZeroShotMiniLMSystem()]


def _checkpoint(model: Any) -> list[RankingSystem]:
    return [EmbeddingSystem("make", model.encode_queries, model.encode_products)]


def _no_spelling(model: Any) -> list[RankingSystem]:
    """MAKE's own trained model with its queries encoded as typed (none where it has no corrector)."""
    if model.model.spelling is None:
        return []
    from makevl.models.inference import MakeEncoder

    as_typed = MakeEncoder(model.model, model.keywords, correct_spelling=False)
    return [EmbeddingSystem("make-no-spelling", as_typed.encode_queries, model.encode_products)]


def _uncalibrated(model: Any) -> list[RankingSystem]:
    """MAKE's own trained model with MA's gate at temperature 1, as it trained (none where
    the model has no gate or kept 1)."""
    gate_model = model.model
    if gate_model.gate is None or float(gate_model.gate_temperature) == 1.0:
        return []

    def encode_products(products: list[Product], **kwargs: Any):
        calibrated = gate_model.gate_temperature.clone()
        gate_model.gate_temperature.fill_(1.0)
        try:
            return model.encode_products(products, **kwargs)
        finally:
            gate_model.gate_temperature.copy_(calibrated)

    return [EmbeddingSystem("make-uncalibrated", model.encode_queries, encode_products)]


def _hybrid(model: Any) -> list[RankingSystem]:
    from makevl.evaluation.baselines import HybridSystem

    make = EmbeddingSystem("make", model.encode_queries, model.encode_products)
    return [HybridSystem(make, spelling=model.model.spelling)]


def _branch(model, titles: list[str] | None = None, products: list[Product] | None = None):
    """MAKE's unit title (or image) branch vectors for static fusion."""
    if products is None:
        products = [Product(id=str(i), title=t, image=None) for i, t in enumerate(titles)]
        return model.encode_branch(products, "title", on_error=lambda *_: None)
    return model.encode_branch(products, "image")


def _static_fusion(model: Any) -> list[RankingSystem]:
    from makevl.evaluation.baselines import static_fusion_grid

    return static_fusion_grid(
        model.encode_queries,
        lambda titles: _branch(model, titles=titles),
        lambda products: _branch(model, products=products),
    )


SYSTEMS: dict[str, SystemSpec] = {}


def register_system(spec: SystemSpec) -> SystemSpec:
    if spec.name in SYSTEMS:
        raise ValueError(f"system {spec.name!r} is already registered")
    if (spec.build is None) == (spec.train_overrides is None):
        raise ValueError(f"system {spec.name!r}: give exactly one of build and train_overrides")
    SYSTEMS[spec.name] = spec
    return spec


def get_system(name: str) -> SystemSpec:
    if name not in SYSTEMS:
        raise ValueError(f"unknown system {name!r}; expected one of {', '.join(SYSTEMS)}")
    return SYSTEMS[name]


# Registration order is the order the report runs and lists them in.
for _spec in [
    SystemSpec("bm25", "baseline", "BM25 over titles", build=_bm25),
    SystemSpec("minilm-zero-shot", "baseline", "MiniLM bi-encoder, query vs title, not trained here",
               build=_minilm),
    SystemSpec("checkpoint", "make", "a trained MAKE checkpoint (--checkpoint)",
               build=_checkpoint, needs_model=True, in_report=False),
    SystemSpec("make", "make",
               "MAKE as the config sets it: query/title/image/fusion encoders, MA, KE where on",
               train_overrides=()),
    SystemSpec("make-no-ma-equal", "ablation",
               "no Modal Adaptation: fixed equal weights over title/image/fused",
               train_overrides=("model.modal_adaptation=false",)),
    SystemSpec("make-no-ma-fused", "ablation", "no Modal Adaptation: fused vector only",
               train_overrides=("model.product_branch=fused",)),
    SystemSpec("make-no-ke", "ablation",
               "no Keyword Enhancement (no pseudo-queries, memory or prediction)",
               train_overrides=NO_KE),
    SystemSpec("make-with-ke", "ablation",
               "with Keyword Enhancement (pseudo-queries, memory and prediction at the default "
               "weights), for a config that leaves it out",
               train_overrides=("model.keyword_enhancement=true",
                                f"loss.keyword_query={LossConfig().keyword_query}",
                                f"loss.keyword_prediction={LossConfig().keyword_prediction}")),
    SystemSpec("make-shared-encoder", "ablation", "one text encoder shared by queries and titles",
               train_overrides=("model.shared_query_title_encoder=true",)),
    SystemSpec("make-no-query-robustness", "ablation",
               "no query augmentation (of queries or pseudo-queries) and no distillation toward "
               "the pretrained query tower",
               train_overrides=("train.augment_typo=0", "train.augment_drop_word=0",
                                "train.augment_reorder=0", "train.augment_pseudo_typo=0",
                                "loss.query_distillation=0")),
    SystemSpec("make-no-block-norm", "ablation",
               "the image parts (CNN features, colour histograms) not normalised before the image "
               "branch's projection",
               train_overrides=("model.image_block_norm=false",)),
    SystemSpec("make-no-spelling", "ablation",
               "MAKE's trained model without query spelling correction (no retraining)",
               build=_no_spelling, needs_model=True),
    SystemSpec("make-uncalibrated", "ablation",
               "MAKE's trained model with MA's gate as trained, not calibrated on validation "
               "(no retraining)",
               build=_uncalibrated, needs_model=True),
    SystemSpec("clip-query-image", "baseline",
               "CLIP-style two-tower: query vs product image, trained here",
               train_overrides=("model.product_branch=image", *MAIN_LOSS_ONLY)),
    SystemSpec("text-bi-encoder", "baseline", "text-only bi-encoder: query vs title, fine-tuned here",
               train_overrides=("model.product_branch=title", *MAIN_LOSS_ONLY)),
    SystemSpec("static-fusion", "baseline",
               "MAKE's title and image branches mixed with fixed weights (a grid)",
               build=_static_fusion, needs_model=True),
    SystemSpec("hybrid", "make",
               "MAKE and BM25 over titles and keywords, fused by reciprocal rank (mode=hybrid)",
               build=_hybrid, needs_model=True),
]:
    register_system(_spec)

# Systems that see only the title text: the sparse-titles claims compare MAKE with them.
TEXT_ONLY = ("bm25", "minilm-zero-shot", "text-bi-encoder")
