"""MAKE pre-training loop: ``train(cfg)`` runs one job, on one process or under torchrun.

The loop is plain PyTorch (as nanoGPT / open_clip): AdamW with linear warmup
and cosine decay to zero (at the last step, or at the end of a wall-clock
budget), gradient accumulation, clipping, optional bf16 autocast,
DDP when ``torchrun`` starts several ranks. A checkpoint is written at every
validation, every ``train.save_every_steps`` steps and at the end;
``resume=True`` continues from ``out_dir/last``
on the same step with the same data order, and SIGINT/SIGTERM stop the run
cleanly at the next step boundary with a checkpoint to resume from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import threading
import time
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from makevl.config import RunConfig, load_config
from makevl.data.catalog import Product
from makevl.data.shop import QuerySet, load_shop
from makevl.evaluation.metrics import mean_metrics
from makevl.keywords import KeywordVocab, build_vocabulary
from makevl.models.checkpoint import (
    CONFIG,
    KEYWORDS,
    WEIGHTS,
    CheckpointError,
    load_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from makevl.models.inference import MakeEncoder
from makevl.models.make import MakeModel
from makevl.models.objective import MakeObjective
from makevl.spelling import SPELLING, SpellingCorrector, build_spelling, config_rules
from makevl.training import distributed as dist_utils
from makevl.training.augment import QueryAugmenter
from makevl.training.cache import cache_image_features, cache_title_features, default_cache_root
from makevl.training.calibration import calibrate_gate
from makevl.training.checkpoint import load_trainer_state, save_training_checkpoint
from makevl.training.data import (
    BadSample,
    Collator,
    EpochBatchSampler,
    PairDataset,
    batches_per_epoch,
    training_pairs,
)
from makevl.training.learning_rates import parameter_lrs
from makevl.training.streaming import StreamingPairDataset, fill_feature_caches, open_train_shards

log = logging.getLogger(__name__)

MIN_SAMPLES_FOR_BAD_CHECK = 256  # judge the bad share only once it means something


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to change."""


@dataclass
class TrainResult:
    step: int
    epoch: int
    loss: float | None  # last logged training loss
    initial_recall: float | None  # val Recall@10 of the untrained model
    best_recall: float | None
    last_recall: float | None
    checkpoint: Path | None  # out_dir/last
    best_checkpoint: Path | None
    samples_per_s: float
    bad_samples: dict[str, int] = field(default_factory=dict)  # reason -> count
    stopped: str = "finished"  # or "max_minutes", "SIGINT", "SIGTERM", "stop_after"
    bf16: bool = False  # whether bf16 autocast was on (train.bf16 may say "auto")


# ------------------------------------------------------------------ small pieces


def warn_val_image(product: Product, exc: Exception) -> None:
    log.warning("validation: product %s (%s): %s", product.id, product.where, exc)


def recall_at_k(model: MakeModel, query_set: QuerySet, k: int = 10) -> float:
    """Mean Recall@k over the query set, by exact inner-product search over its pool."""
    if not query_set.queries or not query_set.pool:
        return float("nan")
    qids = list(query_set.queries)
    encoder = MakeEncoder(model)
    queries = encoder.encode_queries([query_set.queries[q] for q in qids])
    products, _, ids = encoder.encode_products(query_set.pool, on_error=warn_val_image)
    qrels = [query_set.qrels[qid] for qid in qids]
    return mean_metrics(queries, products, ids, qrels, k)[f"recall@{k}"]


class LearningRateSchedule:
    """The LR factor of each step: linear warmup to the peak, then cosine decay to zero.

    The decay ends at ``total_steps`` or, under a wall-clock budget
    (``train.max_minutes``), when the budget is spent: whichever comes first. A run
    its budget cuts short still ends on a small LR, as one that reaches its last
    step does, instead of stopping near the peak LR with the weights wherever the
    last noisy steps left them (budget-aware decay: Li, Yumer and Ramanan,
    "Budgeted Training", ICLR 2020). The trainer sets ``run_seconds`` before each
    step.
    """

    def __init__(
        self, warmup_steps: int, total_steps: int, budget_seconds: float | None = None
    ) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.budget_seconds = budget_seconds
        self.run_seconds = 0.0

    def progress(self, step: int) -> float:
        """How far the decay is, 0 to 1: by steps, or by the budget when that is further."""
        by_steps = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.budget_seconds is None:
            return by_steps
        by_time = self.run_seconds / self.budget_seconds if self.budget_seconds > 0 else 1.0
        return max(by_steps, by_time)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, self.progress(step)))))


def build_optimizer(model: MakeModel, cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases and scales; LRs from :mod:`.learning_rates`."""
    lrs = parameter_lrs([name for name, _ in model.named_parameters()], cfg.train)
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or any(s in name for s in ("bias", "norm", "scale"))
        decay = 0.0 if no_decay else cfg.train.weight_decay
        lr = lrs[name]
        groups.setdefault((lr, decay), []).append(param)
    param_groups = [
        {"params": params, "lr": lr, "weight_decay": decay}
        for (lr, decay), params in groups.items()
    ]
    # The fused kernel is several times faster than the per-tensor loop on CPU too.
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.98), eps=1e-6, fused=True)


class StopRequest:
    """Set by SIGINT/SIGTERM; the loop saves and exits at the next step boundary."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __call__(self, signum, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal_name = signal.Signals(signum).name
        print(
            f"\n{self.signal_name} received: saving a checkpoint at the next step and stopping "
            "(Ctrl-C again to abort without saving)",
            flush=True,
        )


@contextmanager
def handle_stop_signals():
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def memory_bank_state(objective: MakeObjective) -> dict[str, torch.Tensor] | None:
    """The bank's buffers are not in the weights file (non-persistent); resume needs them."""
    if objective.memory_bank is None:
        return None
    return {
        name: buf.detach().cpu().clone() for name, buf in objective.memory_bank.named_buffers()
    }


def _config_differences(saved: RunConfig, current: RunConfig) -> list[str]:
    def flat(tree: dict, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(saved.model_dump(mode="json")), flat(current.model_dump(mode="json"))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a) if a.get(k) != b.get(k)]


# ------------------------------------------------------------------------- train


def train(cfg: RunConfig, resume: bool = False, stop_after: int | None = None) -> TrainResult:
    """Pre-train MAKE as ``cfg`` says; ``resume`` continues from ``out_dir/last``.

    ``stop_after`` ends this session after that many optimizer steps, with a
    checkpoint, as if interrupted (used by tests and time-sliced jobs).
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    info = dist_utils.setup(cfg.train.device)
    try:
        with handle_stop_signals() as stop_request:
            return Trainer(cfg, info, resume, stop_after, stop_request).run()
    finally:
        dist_utils.cleanup(info)


class Trainer:
    """State of one training session; ``run()`` is the loop."""

    def __init__(
        self,
        cfg: RunConfig,
        info: dist_utils.DistInfo,
        resume: bool,
        stop_after: int | None,
        stop_request: StopRequest,
    ) -> None:
        self.cfg, self.info, self.stop_after, self.stop_request = (
            cfg,
            info,
            stop_after,
            stop_request,
        )
        self.out_dir = Path(cfg.train.out_dir)
        self.last_dir, self.best_dir = self.out_dir / "last", self.out_dir / "best"
        self.device = info.device
        # "auto": bf16 only where every rank computes it natively.
        self.bf16 = cfg.train.bf16 is True or (
            cfg.train.bf16 == "auto"
            and not dist_utils.any_rank(not dist_utils.has_native_bf16(self.device), info)
        )
        state = self._check_resume(resume)
        if info.is_main:
            print(f"makevl train: run config\n{cfg.to_yaml()}", flush=True)
            print(f"makevl train: bf16 autocast {'on' if self.bf16 else 'off'} "
                  f"(train.bf16={cfg.train.bf16})", flush=True)
            self.out_dir.mkdir(parents=True, exist_ok=True)

        if cfg.data.train_shards:
            self._open_shards(state)
        else:
            self._load_shop(state)

        # Model: identical initial weights on every rank, then per-rank RNG streams.
        seed_everything(cfg.train.seed)
        self.model = MakeModel.from_config(cfg, num_keywords=len(self.vocab))
        if cfg.model.spelling_correction:
            self.model.spelling = self._spelling(state)
        self.objective = MakeObjective(self.model, cfg.loss, cfg.train.memory_bank_size)
        if state is not None:
            load_weights(self.model, self.resume_dir / WEIGHTS)
            bank = self.objective.memory_bank
            if state.get("memory_bank") is not None and bank is not None:
                for name, buf in bank.named_buffers():
                    buf.copy_(state["memory_bank"][name])
        if info.enabled and self.device.type == "cuda":  # batch statistics over the global batch
            self.objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.objective)
            self.model = self.objective.model
        self.objective.to(self.device)
        self.encoder = MakeEncoder(self.model)
        seed_everything(cfg.train.seed + 1000 * info.rank)
        self.dataset = self._build_dataset()
        self.collator = Collator(
            self.encoder.tokenize_queries, self.encoder.tokenize_titles, len(self.vocab)
        )

        # Schedule.
        t = cfg.train
        self.accum = t.grad_accum_steps
        batches = batches_per_epoch(self.num_pairs, t.batch_size, info.world_size)
        if batches < self.accum:
            raise TrainingError(
                f"an epoch holds {batches} batches, fewer than train.grad_accum_steps="
                f"{self.accum}; lower one of them or the batch size"
            )
        self.steps_per_epoch = batches // self.accum
        self.total_steps = t.max_steps or t.epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(self.model, cfg)
        budget = 60 * t.max_minutes if t.max_minutes is not None else None
        self.schedule = LearningRateSchedule(t.warmup_steps, self.total_steps, budget)
        # A lambda, so the schedule's settings are not in the scheduler's saved state:
        # a resumed run decays over its own budget; the time spent is in "run_seconds".
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: self.schedule(step)
        )
        self.step = self.epoch = self.batch_in_epoch = 0
        self.seconds_before = 0.0  # training time of earlier sessions of this run
        self.session_start = time.monotonic()
        self.bad_counts: Counter[str] = Counter()
        self.good_samples = 0
        self.best_recall = self.initial_recall = self.last_recall = None
        if state is not None:
            self._load_state(state)
        self.ddp = (
            DistributedDataParallel(self.objective, find_unused_parameters=True)
            if info.enabled
            else None
        )
        self.logged_bad: set[str] = set()
        self.saved_at = self.step if state is not None else -1
        self.metrics_path = self.out_dir / "metrics.jsonl"
        if info.is_main and state is None:
            self.metrics_path.write_text("")

    # ----------------------------------------------------------------- setup parts

    def _check_resume(self, resume: bool) -> dict[str, Any] | None:
        try:
            self.resume_dir: Path | None = resolve_checkpoint(self.last_dir)
        except CheckpointError:
            self.resume_dir = None
        if not resume:
            if self.resume_dir is not None:
                raise TrainingError(
                    f"{self.last_dir} already holds a checkpoint: pass --resume to continue "
                    "that run, or choose another train.out_dir"
                )
            return None
        if self.resume_dir is None:
            raise TrainingError(f"--resume: no checkpoint to resume in {self.last_dir}")
        state = load_trainer_state(self.resume_dir)
        saved = load_config(self.resume_dir / CONFIG)
        for change in _config_differences(saved, self.cfg):
            if self.info.is_main:
                log.warning("resuming with a changed setting: %s", change)
        global_batch = self.cfg.train.batch_size * self.info.world_size
        if (state["global_batch"], state["grad_accum_steps"]) != (
            global_batch,
            self.cfg.train.grad_accum_steps,
        ):
            raise TrainingError(
                f"--resume: the checkpoint was trained with a global batch of "
                f"{state['global_batch']} x {state['grad_accum_steps']} accumulation steps, "
                f"this run has {global_batch} x {self.cfg.train.grad_accum_steps}; the data "
                "order would not continue where it stopped"
            )
        return state

    def _load_shop(self, state: dict[str, Any] | None) -> None:
        """The whole shop in memory: train products, pairs, val set, vocabulary."""
        with dist_utils.main_rank_first(self.info):  # the demo preset may have to be generated
            shop = load_shop(self.cfg.data)
        for error in shop.errors[:5]:
            log.warning("skipped while loading: %s", error)
        if len(shop.errors) > 5:
            log.warning("... %d rows skipped while loading %s in all", len(shop.errors), shop.name)
        self.products = shop.products_in("train")
        records = shop.queries_in("train")
        self.val_set = shop.query_set("val")
        if state is not None:
            self.vocab = KeywordVocab.load(self.resume_dir / KEYWORDS)
        else:
            self.vocab = build_vocabulary(self.products, records)
        self.train_queries = records
        self.pairs = training_pairs(self.products, records)
        if not self.pairs:
            raise TrainingError(f"{shop.name}: no (query, product) pairs in the train split")
        self.num_pairs = len(self.pairs)

    def _open_shards(self, state: dict[str, Any] | None) -> None:
        """Pair shards streamed from disk: only their manifest, vocabulary and val set here."""
        self.shards = open_train_shards(self.cfg.data)
        self.val_set = self.shards.val_set()
        saved = self.resume_dir / KEYWORDS if state is not None else self.shards.keywords_file
        self.vocab = KeywordVocab.load(saved)
        self.num_pairs = self.shards.rows

    def _spelling(self, state: dict[str, Any] | None) -> SpellingCorrector:
        """The query spelling corrector: the run's own on resume, else from the train data."""
        known = self.model.query_encoder.tokenizer.get_vocab()
        rules = config_rules(self.cfg.model)
        if state is not None and (self.resume_dir / SPELLING).is_file():
            return SpellingCorrector.load(self.resume_dir / SPELLING, known, **rules)
        if self.cfg.data.train_shards:
            if not self.shards.spelling_file.is_file():
                raise TrainingError(
                    f"{self.shards.spelling_file} missing (shards written by an older makevl): "
                    "shard the data again, or set model.spelling_correction=false"
                )
            return SpellingCorrector.load(self.shards.spelling_file, known, **rules)
        return build_spelling(self.products, self.train_queries, known, **rules)

    def _build_dataset(self) -> PairDataset | StreamingPairDataset:
        cfg, model, info = self.cfg, self.model, self.info
        image_settings = ("image", cfg.model.image_backbone, cfg.data.image_size,
                          cfg.model.image_pooled_stages, cfg.model.image_colour_levels)
        title_settings = ("title", cfg.model.text_backbone, cfg.data.max_title_tokens)
        if cfg.data.train_shards:
            if QueryAugmenter.from_config(cfg.train) or QueryAugmenter.for_pseudo_queries(cfg.train):
                raise TrainingError("train.augment_* is not supported with data.train_shards yet")
            return self._build_stream(image_settings, title_settings)
        product_ids = [p.id for p in self.products]
        image_features = title_features = None
        known_bad: dict[int, BadSample] = {}
        if cfg.train.cache_frozen_features and (cfg.model.freeze_image or cfg.model.freeze_text):
            cache_root = default_cache_root(cfg.train.out_dir)
            with dist_utils.main_rank_first(info):  # rank 0 fills the cache, the others reuse it
                if cfg.model.freeze_image:
                    image_features, known_bad, _ = cache_image_features(
                        model.image_encoder, self.encoder.image_transform, self.products,
                        cache_root, image_settings, self.device,
                    )  # fmt: skip
                if cfg.model.freeze_text:
                    title_features, _ = cache_title_features(
                        model.title_encoder, self.encoder.tokenize_titles, self.products,
                        cache_root, title_settings, cfg.data.max_title_tokens, self.device,
                    )  # fmt: skip
        return PairDataset(
            self.pairs,
            self.products,
            [self.vocab.ids_of(pid) for pid in product_ids],
            [self.vocab.keywords_of(pid) for pid in product_ids],
            self.encoder.image_transform,
            seed=cfg.train.seed,
            image_features=image_features,
            title_features=title_features,
            known_bad=known_bad,
            augment_query=QueryAugmenter.from_config(cfg.train),
            augment_pseudo_query=QueryAugmenter.for_pseudo_queries(cfg.train),
        )

    def _build_stream(self, image_settings: tuple, title_settings: tuple) -> StreamingPairDataset:
        cfg, model, info = self.cfg, self.model, self.info
        image = title = None
        if cfg.train.cache_frozen_features and (cfg.model.freeze_image or cfg.model.freeze_text):
            with dist_utils.main_rank_first(info):  # rank 0 fills the cache, the others reuse it
                image, title = fill_feature_caches(
                    self.shards, default_cache_root(cfg.train.out_dir), self.device,
                    image=(model.image_encoder, self.encoder.image_transform, image_settings)
                    if cfg.model.freeze_image else None,
                    title=(model.title_encoder, self.encoder.tokenize_titles, title_settings,
                           cfg.data.max_title_tokens) if cfg.model.freeze_text else None,
                )  # fmt: skip
        return StreamingPairDataset(
            self.shards, self.vocab.index, self.encoder.image_transform, cfg.train.batch_size,
            cfg.train.seed, info.rank, info.world_size, image, title,
        )  # fmt: skip

    def _load_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_in_epoch = (
            state["step"], state["epoch"], state["batch_in_epoch"]
        )  # fmt: skip
        if self.info.is_main:  # totals live on rank 0; the others add from zero
            self.bad_counts = Counter(state["bad_counts"])
            self.good_samples = state["good_samples"]
        self.best_recall = state["best_recall"]
        self.seconds_before = state.get("run_seconds", 0.0)  # absent before the budgeted LR
        if state.get("bf16", self.bf16) != self.bf16 and self.info.is_main:
            log.warning("resuming with bf16 autocast %s (train.bf16=%s here); the checkpoint "
                        "trained with it %s", "on" if self.bf16 else "off", self.cfg.train.bf16,
                        "on" if state["bf16"] else "off")  # fmt: skip
        self.initial_recall = state["initial_recall"]
        self.last_recall = state["last_recall"]
        rng_states = state["rng"]
        if len(rng_states) == self.info.world_size:
            set_rng_state(rng_states[self.info.rank])
        else:
            log.warning("resuming on a different number of ranks: RNG streams restart")

    # ------------------------------------------------------------------ checkpoints

    def _trainer_state(self) -> dict[str, Any]:
        """Collective: every rank contributes its RNG state and bad-sample counts."""
        rng_states = dist_utils.gather_objects(rng_state(), self.info)
        counts = dist_utils.sum_counts(
            {**self.bad_counts, "__good__": self.good_samples}, self.info
        )
        good = counts.pop("__good__", 0)
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "global_batch": self.cfg.train.batch_size * self.info.world_size,
            "grad_accum_steps": self.accum,
            "world_size": self.info.world_size,
            "rng": rng_states,
            "bad_counts": counts,
            "good_samples": good,
            "best_recall": self.best_recall,
            "initial_recall": self.initial_recall,
            "last_recall": self.last_recall,
            "run_seconds": self._run_seconds(),
            "bf16": self.bf16,
            "memory_bank": memory_bank_state(self.objective),
        }

    def save(self) -> None:
        """Collective; rank 0 writes ``last/``."""
        state = self._trainer_state()
        if self.info.is_main:
            save_training_checkpoint(self.last_dir, self.model, self.cfg, self.vocab, state)
        self.saved_at = self.step
        dist_utils.barrier(self.info)

    def validate(self) -> None:
        """Val Recall@10 on rank 0 (others wait); a new best is saved to ``best/``."""
        if self.info.is_main and self.val_set.queries:
            start = time.perf_counter()
            record: dict[str, Any] = {"step": self.step}
            if self.cfg.train.calibrate_gate and self.model.gate is not None:
                calibration = calibrate_gate(self.model, self.val_set, on_error=warn_val_image)
                recall = calibration.recall
                record["gate_temperature"] = calibration.temperature
                log.info("step %d: MA gate temperature %g (val NDCG@10 %s)", self.step,
                         calibration.temperature,
                         {t: round(v, 4) for t, v in calibration.ndcg.items()})  # fmt: skip
            else:
                recall = recall_at_k(self.model, self.val_set, k=10)
            self.last_recall = recall
            if self.initial_recall is None:
                self.initial_recall = recall
            self._log_metrics(record | {"val_recall@10": recall})
            log.info("step %d: val Recall@10 = %.4f (%.1fs)", self.step, recall,
                     time.perf_counter() - start)  # fmt: skip
            if self.step > 0 and (self.best_recall is None or recall > self.best_recall):
                self.best_recall = recall
                save_checkpoint(self.best_dir, self.model, self.cfg, self.vocab)
        dist_utils.barrier(self.info)

    def _log_metrics(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            with self.metrics_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    # --------------------------------------------------------------------- the loop

    def _note_bad(self, bad: list[BadSample]) -> None:
        for sample in bad:
            self.bad_counts[sample.reason] += 1
            if sample.product_id not in self.logged_bad:
                self.logged_bad.add(sample.product_id)
                log.warning("skipping bad training sample: %s", sample)

    def _check_bad_share(self, force: bool = False) -> None:
        counts = Counter(
            dist_utils.sum_counts({**self.bad_counts, "__good__": self.good_samples}, self.info)
        )
        good = counts.pop("__good__", 0)
        bad = sum(counts.values())
        seen = good + bad
        if not seen or (seen < MIN_SAMPLES_FOR_BAD_CHECK and not force):
            return
        limit = self.cfg.data.max_bad_fraction
        if bad / seen > limit:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in counts.most_common())
            raise TrainingError(
                f"{bad} of {seen} training samples ({bad / seen:.1%}) were unusable "
                f"({reasons}), more than data.max_bad_fraction={limit}; fix the data "
                "(see the warnings above, or run `makevl data validate`) or raise the limit"
            )

    def _loader(self) -> DataLoader:
        t = self.cfg.train
        num_batches = self.steps_per_epoch * self.accum  # whole optimizer steps only
        settings: dict[str, Any] = {
            "collate_fn": self.collator,
            "num_workers": self.cfg.data.num_workers,
            "pin_memory": self.device.type == "cuda",
            # Workers' seeds come from here, not from the global RNG, so resuming
            # mid-epoch leaves the training RNG stream exactly as it was.
            "generator": torch.Generator().manual_seed(t.seed * 100_003 + self.epoch),
        }
        if isinstance(self.dataset, StreamingPairDataset):
            self.dataset.set_position(self.epoch, self.batch_in_epoch, num_batches)
            return DataLoader(self.dataset, batch_size=None, **settings)
        self.dataset.set_epoch(self.epoch)
        sampler = EpochBatchSampler(
            len(self.dataset), t.batch_size, t.seed, self.epoch, self.info.rank,
            self.info.world_size, start_batch=self.batch_in_epoch, num_batches=num_batches,
        )  # fmt: skip
        return DataLoader(self.dataset, batch_sampler=sampler, **settings)

    def _micro_step(self, inputs: dict[str, torch.Tensor], sync: bool) -> dict[str, float]:
        module = self.ddp or self.objective
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in inputs.items()}
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext()
        autocast = torch.autocast(self.device.type, torch.bfloat16, enabled=self.bf16)
        with no_sync:
            with autocast:
                out = module(inputs)
            (out["loss"] / self.accum).backward()
        return {k: float(v.detach()) for k, v in out.items()}

    def _optimizer_step(self) -> float:
        if self.cfg.train.grad_clip:
            params = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return lr

    def _run_seconds(self) -> float:
        """Wall-clock seconds this run has trained, all sessions together; equal on every rank
        (the LR follows it, and ranks with different LRs would drift apart)."""
        seconds = self.seconds_before + time.monotonic() - self.session_start
        return dist_utils.max_float(seconds, self.info)

    def _should_stop(self, session_steps: int) -> str | None:
        reason = None
        if self.stop_request.signal_name:
            reason = self.stop_request.signal_name
        elif self.stop_after is not None and session_steps >= self.stop_after:
            reason = "stop_after"
        elif self.cfg.train.max_minutes is not None and (
            self._run_seconds() > 60 * self.cfg.train.max_minutes
        ):
            reason = "max_minutes"
        # Every rank must stop at the same step: agree on "any rank wants to stop".
        if dist_utils.any_rank(reason is not None, self.info):
            return reason or self.stop_request.signal_name or "stop requested by another rank"
        return None

    def run(self) -> TrainResult:
        t, info = self.cfg.train, self.info
        if self.step == 0 and self.batch_in_epoch == 0 and self.initial_recall is None:
            self.validate()  # the untrained model's recall, the baseline to beat
        self.model.train()
        self.session_start, session_steps = time.monotonic(), 0
        samples, train_seconds = 0, 0.0  # global samples this session, time in steps
        last_loss: float | None = None
        stopped: str | None = None
        progress = tqdm(
            total=self.total_steps, initial=self.step, disable=not info.is_main,
            desc="train", unit="step", dynamic_ncols=True, mininterval=1.0,
        )  # fmt: skip
        running: dict[str, float] = {}
        tick = time.perf_counter()
        while self.step < self.total_steps and stopped is None:
            for batch in self._loader():
                self.batch_in_epoch += 1
                sync = self.batch_in_epoch % self.accum == 0
                self._note_bad(batch["bad"])
                size = batch["size"]
                if info.enabled:  # gathered losses need equal shards: trim to the smallest
                    size = dist_utils.min_int(size, info)
                if size > 0:
                    inputs = {k: v[:size] for k, v in batch["inputs"].items()}
                    for key, value in self._micro_step(inputs, sync).items():
                        running[key] = running.get(key, 0.0) + value / self.accum
                    self.good_samples += size
                    samples += size * info.world_size
                elif sync:  # nothing to learn from here, but ranks' gradients must agree
                    dist_utils.average_gradients(self.model.parameters(), info)
                if not sync:
                    continue

                if t.max_minutes is not None:  # the LR decays by the time spent
                    self.schedule.run_seconds = self._run_seconds()
                lr = self._optimizer_step()
                session_steps += 1
                train_seconds += time.perf_counter() - tick
                speed = samples / max(train_seconds, 1e-9)
                last_loss = running.get("loss", last_loss)
                progress.set_postfix(  # drawn by update(), at most once per mininterval
                    loss="-" if last_loss is None else f"{last_loss:.4f}",
                    samples_s=f"{speed:.1f}",
                    refresh=False,
                )
                progress.update(1)
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    self._log_metrics({"step": self.step, "epoch": self.epoch, **running,
                                       "lr": lr, "samples_per_s": speed})  # fmt: skip
                    self._check_bad_share()
                running = {}
                epoch_end = self.batch_in_epoch == self.steps_per_epoch * self.accum
                if epoch_end:  # a checkpoint from here resumes at the next epoch's start
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    self._check_bad_share(force=True)
                if (t.eval_every and self.step % t.eval_every == 0) or (
                    not t.eval_every and epoch_end
                ):
                    self.validate()
                    self.save()
                elif t.save_every_steps and self.step % t.save_every_steps == 0:
                    self.save()  # a crash now costs at most save_every_steps steps
                tick = time.perf_counter()
                if self.step >= self.total_steps:
                    break
                stopped = self._should_stop(session_steps)
                if stopped:
                    break
        progress.close()

        self._check_bad_share(force=True)
        if self.saved_at != self.step:
            if stopped in (None, "max_minutes"):
                self.validate()
            self.save()
        if stopped and info.is_main:
            print(f"stopped ({stopped}) at step {self.step}; checkpoint in {self.last_dir}; "
                  "continue with --resume", flush=True)  # fmt: skip
        return TrainResult(
            step=self.step,
            epoch=self.epoch,
            loss=last_loss,
            initial_recall=self.initial_recall,
            best_recall=self.best_recall,
            last_recall=self.last_recall,
            checkpoint=self.last_dir,
            best_checkpoint=self.best_dir if (self.best_dir / WEIGHTS).is_file() else None,
            samples_per_s=samples / max(train_seconds, 1e-9),
            bad_samples=dict(dist_utils.sum_counts(self.bad_counts, info)),
            stopped=stopped or "finished",
            bf16=self.bf16,
        )


def result_summary(result: TrainResult) -> str:
    data = asdict(result)
    return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in data.items()})
