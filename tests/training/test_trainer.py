"""The training loop: it learns, resumes exactly, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from makevl.cli import main as cli_main
from makevl.config import bundled_config
from makevl.models.checkpoint import load_checkpoint
from makevl.models.make import MakeModel
from makevl.training import distributed as dist_utils
from makevl.training import trainer as trainer_module
from makevl.training.augment import QueryAugmenter
from makevl.training.checkpoint import load_trainer_state
from makevl.training.data import PairDataset
from makevl.training.trainer import (
    LearningRateSchedule,
    TrainingError,
    build_optimizer,
    train,
)

ROOT = Path(__file__).resolve().parents[2]


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in metrics(out_dir) if "loss" in m}


@pytest.mark.parametrize(
    "settings",
    [
        # dropout in the tiny BERTs and a memory bank: RNG and bank state must come back
        ("data.num_workers=0", "train.memory_bank_size=16"),
        # workers and gradient accumulation; the stop lands mid-epoch
        ("data.num_workers=2", "train.grad_accum_steps=2"),
    ],
)
def test_resume_gives_identical_weights(demo40: Path, tmp_path: Path, tiny_config, settings):
    # 6 batches of 8 per epoch: 8 steps cross an epoch boundary (validation + save there).
    steps = 8 if "train.grad_accum_steps=2" not in settings else 5
    straight = tiny_config(demo40, tmp_path / "straight", f"train.max_steps={steps}", *settings)
    split = tiny_config(demo40, tmp_path / "split", f"train.max_steps={steps}", *settings)
    a = train(straight)
    half = train(split, stop_after=steps // 2)
    assert half.stopped == "stop_after" and half.step == steps // 2
    b = train(split, resume=True)
    assert a.step == b.step == steps

    weights_a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    weights_b = load_file(tmp_path / "split" / "last" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    different = [k for k in weights_a if not torch.equal(weights_a[k], weights_b[k])]
    assert not different, f"weights differ after resume: {different[:5]}"
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")
    state_a = load_trainer_state(tmp_path / "straight" / "last")
    state_b = load_trainer_state(tmp_path / "split" / "last")
    if state_a["memory_bank"] is not None:
        assert all(torch.equal(state_a["memory_bank"][k], state_b["memory_bank"][k])
                   for k in state_a["memory_bank"])  # fmt: skip


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(demo40, tmp_path, tiny_config):
    cfg = tiny_config(demo40, tmp_path / "run", "train.max_steps=1")
    with pytest.raises(TrainingError, match="no checkpoint to resume"):
        train(cfg, resume=True)
    train(cfg)
    with pytest.raises(TrainingError, match="already holds a checkpoint.*--resume"):
        train(cfg)


def test_training_lowers_loss_and_beats_the_untrained_model(demo300, tmp_path, tiny_config):
    # about 780 train pairs and 27 val products: 2 epochs of 24 steps
    cfg = tiny_config(demo300, tmp_path / "run", "train.batch_size=32", "train.epochs=2",
                      "train.lr=2e-3", "train.warmup_steps=5")  # fmt: skip
    result = train(cfg)
    curve = [loss for _, loss in sorted(losses(tmp_path / "run").items())]
    assert len(curve) == result.step == 48
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert last < 0.75 * first, f"loss {first:.3f} -> {last:.3f}"
    assert result.initial_recall is not None and result.best_recall is not None
    assert result.best_recall >= result.initial_recall + 0.2, (
        f"val Recall@10 {result.initial_recall:.3f} -> {result.best_recall:.3f}"
    )
    assert result.samples_per_s > 0
    # best/ holds the model that scored best_recall; it loads for eval/index/serve
    model, loaded_cfg, vocab = load_checkpoint(tmp_path / "run" / "best")
    assert loaded_cfg == cfg and len(vocab) == model.num_keywords


def test_a_one_layer_query_tower_learns_too(demo300, tmp_path, tiny_config):
    cfg = tiny_config(demo300, tmp_path / "run", "train.batch_size=32", "train.epochs=2",
                      "train.lr=2e-3", "train.warmup_steps=5", "model.query_layers=1")  # fmt: skip
    result = train(cfg)
    model = load_checkpoint(tmp_path / "run" / "best")[0]
    assert len(model.query_encoder.model.encoder.layer) == 1
    assert result.best_recall >= result.initial_recall + 0.2, (
        f"val Recall@10 {result.initial_recall:.3f} -> {result.best_recall:.3f}"
    )


def test_spelling_correction_wins_back_what_typos_cost(demo300, tmp_path, tiny_config):
    from makevl.data.shop import QuerySet, load_shop
    from makevl.data.text import add_typo
    from makevl.evaluation.evaluator import EmbeddingSystem, RetrievalEvaluator
    from makevl.models.inference import MakeEncoder

    cfg = tiny_config(demo300, tmp_path / "run", "train.batch_size=32", "train.epochs=2",
                      "train.lr=2e-3", "train.warmup_steps=5",
                      "model.spelling_correction=true")  # fmt: skip
    train(cfg)
    model = load_checkpoint(tmp_path / "run" / "best")[0]
    corrected, as_typed = MakeEncoder(model), MakeEncoder(model, correct_spelling=False)
    shop = load_shop(cfg.data)
    clean = shop.query_set("train")  # the queries the model learned: what a typo costs is plain
    rng = random.Random(0)
    typos = {q: add_typo(text, rng, set(model.spelling.counts)) for q, text in clean.queries.items()}
    assert sum(typos[q] != text for q, text in clean.queries.items()) > 0.9 * len(typos)

    def ndcg(queries: dict[str, str], encoder: MakeEncoder) -> float:
        evaluator = RetrievalEvaluator(QuerySet(queries, clean.qrels, clean.pool), bootstrap=10)
        system = EmbeddingSystem("make", encoder.encode_queries, corrected.encode_products)
        return evaluator.evaluate(system).metrics["ndcg@10"]

    clean_ndcg, typo_ndcg, fixed_ndcg = (
        ndcg(clean.queries, corrected), ndcg(typos, as_typed), ndcg(typos, corrected)
    )
    assert typo_ndcg < clean_ndcg - 0.05, (clean_ndcg, typo_ndcg)  # typos hurt the model
    # and are undone (measured: clean 0.450, typos 0.303, typos corrected 0.441)
    assert fixed_ndcg > max(typo_ndcg + 0.1, clean_ndcg - 0.03), (clean_ndcg, typo_ndcg, fixed_ndcg)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues(demo40: Path, tmp_path: Path, tiny_config):
    out = tmp_path / "run"
    cfg = tiny_config(demo40, out, "train.epochs=1000")
    config_file = tmp_path / "run.yaml"
    cfg.save(config_file)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "makevl.cli", "train", "--config", str(config_file)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it is really training
            if (out / "metrics.jsonl").exists() and len(losses(out)) >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("training did not start within 60 s")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    text = output.decode()
    assert process.returncode == 143, text[-2000:]
    assert "SIGTERM received" in text and "continue with --resume" in text
    state = load_trainer_state(out / "last")
    assert state["step"] == max(losses(out)) >= 3

    resumed = subprocess.run(
        command + ["--resume", f"train.max_steps={state['step'] + 2}"],
        check=False, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_trainer_state(out / "last")["step"] == state["step"] + 2


@pytest.mark.slow
def test_kill_9_loses_at_most_save_every_steps_and_resumes_identically(
    demo40: Path, tmp_path: Path, tiny_config
):
    """SIGKILL at a random point (maybe mid-save): at most save_every_steps steps are lost,
    and the resumed run ends with the very weights of a run never interrupted."""
    steps, every = 16, 3  # 6 steps an epoch: saves at 3, 6 (epoch end), 9, 12, 15
    rng = random.Random()
    kill_at, delay = rng.randint(every + 1, steps - 4), rng.uniform(0.0, 0.5)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }

    def command(name: str) -> list[str]:
        cfg = tiny_config(demo40, tmp_path / name, f"train.max_steps={steps}",
                          f"train.save_every_steps={every}", "train.num_threads=1")  # fmt: skip
        config_file = tmp_path / f"{name}.yaml"
        cfg.save(config_file)
        return [sys.executable, "-m", "makevl.cli", "train", "--config", str(config_file)]

    def run_to_the_end(args: list[str]) -> None:
        done = subprocess.run(
            args, check=False, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    run_to_the_end(command("straight"))
    out = tmp_path / "killed"
    process = subprocess.Popen(command("killed"), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and max(losses(out), default=0) >= kill_at):
            assert time.monotonic() < deadline, "training did not reach the kill point in 120 s"
            time.sleep(0.05)
        time.sleep(delay)
        process.kill()  # SIGKILL: no handler runs, no checkpoint is written
        process.wait(timeout=60)
    finally:
        process.kill()
    where = f"killed at step {kill_at} + {delay:.2f} s"
    assert process.returncode == -signal.SIGKILL, f"{where}: the run ended before the kill"
    saved = load_trainer_state(out / "last")["step"]
    assert 0 <= max(losses(out)) - saved <= every, f"{where}: lost {max(losses(out)) - saved}"

    run_to_the_end(command("killed") + ["--resume"])
    assert not list(out.glob(".*.tmp-*")), f"{where}: unfinished saves left behind"
    straight = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    resumed = load_file(out / "last" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    different = [k for k in straight if not torch.equal(straight[k], resumed[k])]
    assert not different, f"{where}: weights differ after resume: {different[:5]}"
    assert losses(tmp_path / "straight") == losses(out)  # re-run steps logged their loss again


def test_schedule_warms_up_then_decays_to_zero():
    factor = LearningRateSchedule(warmup_steps=4, total_steps=20)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    decay = [factor(s) for s in range(4, 21)]
    assert decay == sorted(decay, reverse=True) and decay[-1] == pytest.approx(0.0)


def test_schedule_decays_by_the_time_budget_when_that_ends_first():
    # 1,000 steps would take far longer than the 60 s budget: the budget sets the decay.
    factor = LearningRateSchedule(warmup_steps=4, total_steps=1000, budget_seconds=60.0)
    factor.run_seconds = 30.0
    assert factor(10) == pytest.approx(0.5)  # half the budget spent: half-way down the cosine
    factor.run_seconds = 60.0
    assert factor(11) == pytest.approx(0.0)
    assert factor(2) == 0.75  # warmup is by steps
    # The steps end first: the budget does not slow the decay down.
    factor.run_seconds = 1.0
    assert factor(1000) == pytest.approx(0.0)
    assert LearningRateSchedule(4, 1000)(10) > 0.99  # without a budget: the step schedule


def test_a_run_its_budget_stops_ends_on_a_small_lr_and_resumes_with_the_time_spent(
    demo40, tmp_path, tiny_config
):
    # 500 epochs of 6 steps take minutes; a 6-second budget stops the run long before.
    # No validation or checkpoint inside the budget: only the steps' own time separates
    # the last LR update from the end of the budget, so the check holds on a slow machine.
    cfg = tiny_config(demo40, tmp_path, "train.max_minutes=0.1", "train.epochs=500",
                      "train.lr=1e-3", "train.num_threads=1", "train.eval_every=100000",
                      "train.save_every_steps=0")  # fmt: skip
    first = train(cfg, stop_after=3)
    spent = load_trainer_state(tmp_path / "last")["run_seconds"]
    assert first.stopped == "stop_after" and 0 < spent < 6
    result = train(cfg, resume=True)
    assert result.stopped == "max_minutes"
    state = load_trainer_state(tmp_path / "last")
    assert state["run_seconds"] >= 6  # the resumed session counted on from the first one's time
    peak = max(m["lr"] for m in metrics(tmp_path) if "lr" in m)
    assert peak == pytest.approx(1e-3, rel=0.05)
    # The LR of the next step, were there one: near zero, not near the peak (the step
    # schedule alone would still be near it after so few of its 3,000 steps).
    assert state["optimizer"]["param_groups"][0]["lr"] < 0.1 * peak
    assert LearningRateSchedule(2, 500 * 6)(result.step) > 0.9


def test_optimizer_groups(demo40, tmp_path, tiny_config):
    cfg = tiny_config(demo40, tmp_path, "train.backbone_lr=1e-5", "model.freeze_image=true")
    model = MakeModel.from_config(cfg, num_keywords=5)
    groups = build_optimizer(model, cfg).param_groups
    by_param = {id(p): g for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert by_param[id(names["logit_scale"])]["weight_decay"] == 0.0
    assert by_param[id(names["query_proj.bias"])]["weight_decay"] == 0.0
    assert by_param[id(names["query_proj.weight"])]["weight_decay"] == cfg.train.weight_decay
    assert by_param[id(names["query_proj.weight"])]["lr"] == cfg.train.lr
    tower = "title_encoder.model.encoder.layer.0.attention.self.query.weight"
    assert by_param[id(names[tower])]["lr"] == 1e-5
    assert not any(n.startswith("image_encoder.") and id(p) in by_param for n, p in names.items())


def test_bf16_eval_every_and_time_budget(demo40, tmp_path, tiny_config):
    cfg = tiny_config(demo40, tmp_path / "bf16", "train.bf16=true", "train.max_steps=4",
                      "train.eval_every=2")  # fmt: skip
    result = train(cfg)
    assert result.step == 4 and math.isfinite(result.loss)
    recalls = [m["step"] for m in metrics(tmp_path / "bf16") if "val_recall@10" in m]
    assert recalls == [0, 2, 4]
    budget = tiny_config(demo40, tmp_path / "budget", "train.max_minutes=0.0", "train.epochs=50")
    stopped = train(budget)
    assert stopped.stopped == "max_minutes" and stopped.step == 1
    assert load_trainer_state(tmp_path / "budget" / "last")["step"] == 1


def test_bf16_auto_follows_the_hardware(demo40, tmp_path, tiny_config, monkeypatch):
    """"auto" trains exactly as bf16=true where bf16 is native, as fp32 where it is not."""

    def run(name: str, setting: str) -> tuple[bool, dict[int, float]]:
        cfg = tiny_config(demo40, tmp_path / name, f"train.bf16={setting}", "train.max_steps=3",
                          "train.log_every=1")  # fmt: skip
        return train(cfg).bf16, losses(tmp_path / name)

    on, bf16_losses = run("on", "true")
    off, fp32_losses = run("off", "false")
    assert (on, off) == (True, False) and bf16_losses != fp32_losses
    for native, expected in ((True, bf16_losses), (False, fp32_losses)):
        monkeypatch.setattr(dist_utils, "has_native_bf16", lambda device, native=native: native)
        assert run(f"auto-{native}", "auto") == (native, expected)
    with pytest.raises(ValueError, match="bf16"):
        tiny_config(demo40, tmp_path / "bad", "train.bf16=maybe")


def test_resuming_where_auto_bf16_resolves_otherwise_says_so(
    demo40, tmp_path, tiny_config, monkeypatch, caplog
):
    cfg = tiny_config(demo40, tmp_path, "train.bf16=auto", "train.max_steps=4")
    monkeypatch.setattr(dist_utils, "has_native_bf16", lambda device: True)
    assert train(cfg, stop_after=2).bf16
    monkeypatch.setattr(dist_utils, "has_native_bf16", lambda device: False)  # other hardware
    with caplog.at_level(logging.WARNING, logger="makevl.training.trainer"):
        resumed = train(cfg, resume=True)
    assert resumed.step == 4 and not resumed.bf16
    assert "bf16 autocast off (train.bf16=auto here); the checkpoint trained with it on" in (
        caplog.text
    )


def test_native_bf16_follows_the_cpus_instructions():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if not flags:
        pytest.skip("no /proc/cpuinfo to compare with")
    words = set(flags.split())
    expected = "avx512_bf16" in words or "amx_tile" in words
    assert dist_utils.has_native_bf16(torch.device("cpu")) == expected
    assert not dist_utils.has_native_bf16(torch.device("meta"))


def test_cli_trains_from_a_bundled_config(demo40, tmp_path, capsys):
    code = cli_main(["train", "--config", "demo-tiny", f"data.catalog={demo40}",
                     f"train.out_dir={tmp_path / 'run'}", "train.batch_size=8",
                     "data.image_size=32", "model.embed_dim=32", "train.max_steps=2"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "run config" in out and "step 2 (epoch 0)" in out and "val Recall@10" in out
    assert cli_main(["train", "--config", "demo-tiny", "train.nonsense=1"]) == 2
    assert "nonsense" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["demo-tiny", "demo-pretrained", "fashion-mini"])
def test_bundled_configs_load(name):
    cfg = bundled_config(name)
    assert cfg.train.out_dir == f"runs/{name}"


def test_pseudo_queries_are_misspelt_only_when_the_config_asks(
    demo40, tmp_path, tiny_config, monkeypatch
):
    built = []

    def pair_dataset(*args, **kwargs):
        built.append(PairDataset(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(trainer_module, "PairDataset", pair_dataset)
    for rate in (0.0, 0.3):
        train(tiny_config(demo40, tmp_path / str(rate), "train.max_steps=1",
                          "train.augment_reorder=0.5", f"train.augment_pseudo_typo={rate}"))
    assert built[0].augment_query == built[1].augment_query == QueryAugmenter(reorder=0.5)
    assert built[0].augment_pseudo_query is None
    assert built[1].augment_pseudo_query == QueryAugmenter(typo=0.3)
