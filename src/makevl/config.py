"""One typed config object per run.

A run is described by a single :class:`RunConfig`, loaded from YAML, overridden
from the command line with dotted ``section.key=value`` pairs, printed at the
start of every run and saved next to every checkpoint. Unknown keys are errors,
so a typo in a config file never silently falls back to a default.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ColumnMapping(_Section):
    """Which source column holds each field. ``None`` means the field is absent."""

    id: str = "id"
    title: str = "title"
    image: str | None = "image"
    keywords: str | None = "keywords"  # ";"-separated keywords, optional
    # Columns kept as product attributes; None keeps every column not mapped above.
    attributes: list[str] | None = None
    # Query-log columns.
    query: str = "query"
    product_id: str = "product_id"
    label: str | None = "label"


class DataConfig(_Section):
    preset: Literal["demo", "fashion-mini", "custom"] = "demo"
    catalog: str | None = None  # path to CSV / JSONL / Parquet; presets fill it in
    queries: str | None = None  # query log path (custom data)
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    encoding: str = "utf-8"  # text encoding of CSV/TSV/JSONL catalogs and query logs
    # A folder outside the catalog's own that its image paths may point into; any
    # other image path (absolute, "..", a symlink out) is a row error.
    image_root: str | None = None
    demo_products: int = 2000
    split_seed: int = 0
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    max_title_chars: int = Field(512, gt=0)  # longer titles are reported / truncated
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)  # fail a run above this share
    sparse_titles: bool = False  # strip colour words from titles (harder condition)
    unseen_phrasing: bool = False  # test queries worded as training never saw (fashion-mini)
    image_size: int = Field(224, gt=0)
    max_query_tokens: int = Field(16, gt=0)
    max_title_tokens: int = Field(48, gt=0)
    num_workers: int = Field(0, ge=0)
    # A `makevl data shard` folder: train on its pair shards, streamed, and validate on
    # the val set it holds. None: the whole shop is loaded in memory.
    train_shards: str | None = None


class ModelConfig(_Section):
    text_backbone: str = "tiny"  # "tiny", "minilm" or a local Hugging Face model directory
    query_backbone: str | None = None  # None: same architecture as text_backbone, own weights
    shared_query_title_encoder: bool = False  # ablation: one text encoder for both
    # Keep only the query tower's first N transformer layers: the query side runs online,
    # per keystroke, and its cost grows with depth; None: all of them.
    query_layers: int | None = Field(None, ge=1)
    image_backbone: str = "tiny"  # "tiny", "efficientnet_lite0" or any timm model name
    image_weights: str | None = None  # local weight file for a timm image backbone
    # Also pool the image tower's last N stages before the final map into the image
    # vector (colour and texture live early); 0: the final map only.
    image_pooled_stages: int = Field(0, ge=0)
    # Also append RGB colour histograms of the photo (this many soft bins per channel;
    # models/backbones.py colour_histogram); 0: none.
    image_colour_levels: int = Field(0, ge=0)
    # Layer-normalise each block of the pooled image vector (final map, each stage,
    # the histograms) before the image branch's projection, so that no block
    # outweighs another by its scale alone (models/make.py normalize_blocks).
    image_block_norm: bool = False
    embed_dim: int = Field(256, gt=0)
    fusion_layers: int = Field(2, ge=1)
    fusion_heads: int = Field(4, ge=1)
    modal_adaptation: bool = True  # False: fixed equal weights over title/image/fused
    # Which vector represents a product: "adaptive" mixes title/image/fused (MAKE);
    # "title", "image" or "fused" use one branch (baselines and the fused-only ablation).
    product_branch: Literal["adaptive", "title", "image", "fused"] = "adaptive"
    keyword_enhancement: bool = True
    # Correct a query's typos against the shop's words before encoding (makevl/spelling.py).
    spelling_correction: bool = False
    # A typo with no shop word one edit away becomes the most frequent English word one
    # edit away (makevl/spelling.py); only with spelling_correction.
    spelling_english_fallback: bool = False
    # A real word one edit from a shop word becomes it when that word's share of the shop's
    # words is at least this many times the typed word's share of English ("wite" ->
    # "white"); 0: real words are never corrected (makevl/spelling.py).
    spelling_real_word_ratio: float = Field(0.0, ge=0.0)
    freeze_text: bool = False
    freeze_image: bool = False
    # Keep the text towers' word-piece embeddings as pretrained: the backward pass and the
    # optimizer skip half of MiniLM's parameters (docs/BENCHMARKS.md).
    freeze_word_embeddings: bool = False
    init_temperature: float = Field(0.07, gt=0.0)


class LossConfig(_Section):
    query_product: float = 1.0
    title_image: float = 0.5
    query_title: float = 0.25
    query_image: float = 0.25
    keyword_query: float = 0.5
    keyword_prediction: float = 0.2
    # Off by default: keep the query tower's query-query similarities as pretrained.
    query_distillation: float = 0.0


class TrainConfig(_Section):
    out_dir: str = "runs/default"
    seed: int = 0
    epochs: int = Field(3, ge=0)
    max_steps: int | None = None  # stop after this many optimizer steps
    # Wall-clock budget of the run's training (resumed sessions count together): the LR
    # decays to zero by its end, and a checkpoint is saved there.
    max_minutes: float | None = None
    batch_size: int = Field(32, gt=0)
    grad_accum_steps: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0.0)
    backbone_lr: float | None = None  # lower LR for pretrained towers; None: same as lr
    query_backbone_lr: float | None = Field(None, gt=0.0)  # the query tower's; None: backbone_lr
    # Layer-wise LR decay in the text towers (1: off); see training/learning_rates.py.
    layer_lr_decay: float = Field(1.0, gt=0.0, le=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    warmup_steps: int = Field(20, ge=0)
    grad_clip: float | None = 1.0
    # bf16 autocast. "auto": on where the hardware computes bf16 natively (a CUDA GPU
    # with bf16, a CPU with AVX512-BF16 or AMX), about twice the samples/s there; off
    # elsewhere, where emulated bf16 is many times slower than fp32.
    bf16: bool | Literal["auto"] = False
    cache_frozen_features: bool = True  # cache a frozen tower's outputs on disk
    memory_bank_size: int = Field(0, ge=0)  # extra negatives from recent product vectors
    # Query augmentation (training/augment.py): chance per training query of each change.
    augment_typo: float = Field(0.0, ge=0.0, le=1.0)
    augment_drop_word: float = Field(0.0, ge=0.0, le=1.0)
    augment_reorder: float = Field(0.0, ge=0.0, le=1.0)
    # Chance of one typo in a KE keyword pseudo-query: catalog words typed the way shoppers
    # do (they are 1-3 keywords in random order already, so nothing to drop or reorder).
    augment_pseudo_typo: float = Field(0.0, ge=0.0, le=1.0)
    eval_every: int = Field(0, ge=0)  # steps between validation runs; 0: at epoch end
    # At each validation, fit the temperature of MA's softmax on the val split
    # (training/calibration.py); it applies in eval mode only. False: keep 1.
    calibrate_gate: bool = True
    # steps between checkpoints of out_dir/last (besides those at validation); 0: only
    # there. Bounds what a crash (kill -9, power loss) costs.
    save_every_steps: int = Field(500, ge=0)
    log_every: int = Field(10, gt=0)
    device: str = "auto"  # "auto", "cpu", "cuda"
    # CPU threads for torch; 0 keeps torch's default. Small models on a busy
    # 2-core machine train several times faster on 1 thread than on 2.
    num_threads: int = Field(0, ge=0)


class RunConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "model.text_backbone=minilm"]`` into a nested dict.

    Values are parsed as YAML scalars, so ``true``, ``3``, ``1e-3`` and ``null``
    get their natural types.
    """
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _from_text(text: str, where: str, overrides: list[str] | None) -> RunConfig:
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{where}: top level must be a mapping of sections")
    return _validate(_merge(tree, parse_overrides(overrides or [])), f"config in {where}")


def _validate(tree: dict[str, Any], what: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid {what}: {problems}") from exc


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a :class:`RunConfig` from an optional YAML file plus dotted overrides."""
    if path is None:
        return _validate(parse_overrides(overrides or []))
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    return _from_text(path.read_text(encoding="utf-8"), str(path), overrides)


def _bundled_folder():
    return resources.files("makevl") / "configs"


def bundled_config_names() -> list[str]:
    """Names of the configs shipped inside the package (``demo-tiny``, ...)."""
    return sorted(item.name[: -len(".yaml")] for item in _bundled_folder().iterdir()
                  if item.name.endswith(".yaml"))


def bundled_config(name: str, overrides: list[str] | None = None) -> RunConfig:
    """A config shipped with the package, read as a package resource (works when installed)."""
    stem = name.removesuffix(".yaml")
    if stem not in bundled_config_names():
        raise ConfigError(
            f"no bundled config {name!r}; bundled: {', '.join(bundled_config_names())}"
        )
    text = (_bundled_folder() / f"{stem}.yaml").read_text(encoding="utf-8")
    return _from_text(text, f"bundled config {stem}", overrides)


def resolve_config(name_or_file: str, overrides: list[str] | None = None) -> RunConfig:
    """A YAML file when that path exists, else a bundled config by name (``demo-tiny``)."""
    if Path(name_or_file).is_file():
        return load_config(name_or_file, overrides)
    if name_or_file.removesuffix(".yaml") in bundled_config_names():
        return bundled_config(name_or_file, overrides)
    raise ConfigError(
        f"config file not found: {name_or_file} "
        f"(and no bundled config of that name; bundled: {', '.join(bundled_config_names())})"
    )


def with_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """A copy of ``cfg`` with dotted overrides applied (validated like a fresh load)."""
    return _validate(_merge(cfg.model_dump(mode="json"), parse_overrides(overrides)), "override")
