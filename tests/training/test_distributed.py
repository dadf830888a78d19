"""``makevl train`` under torchrun: 2 CPU ranks (gloo) == 1 process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]

# Dropout would draw different masks on 2 ranks than on 1 process; switch it off
# in the tiny BERTs so the comparison is exact. The image tower is frozen (its
# BatchNorm in eval mode): per-rank batch statistics would differ as well.
# Each rank leaves with os._exit once train() has returned (its files written, the
# process group destroyed): in a fresh venv a rank sometimes aborts in the C++
# teardown after that ("terminate called without an active exception", about 2
# runs in 10 here), which is not what these tests test.
SCRIPT = textwrap.dedent(
    """
    import functools, os, sys
    from transformers import BertConfig
    import makevl.models.backbones as backbones
    backbones.BertConfig = functools.partial(
        BertConfig, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    from makevl.config import load_config
    from makevl.training.trainer import train
    train(load_config(sys.argv[1], sys.argv[2:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def logged_losses(out_dir: Path) -> dict[int, dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return {m["step"]: m for m in map(json.loads, lines) if "loss" in m}


def prepare_run(tmp_path: Path, cfg) -> tuple[Path, Path, dict[str, str]]:
    """The training script, ``cfg`` saved as a file, and the environment the ranks run in."""
    script = tmp_path / "run_train.py"
    script.write_text(SCRIPT)
    config_file = tmp_path / "config.yaml"
    cfg.save(config_file)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MAKEVL_CACHE_DIR": str(tmp_path / "cache"),
    }
    return script, config_file, env


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_global_batch(demo40, tmp_path, tiny_config):
    cfg = tiny_config(demo40, tmp_path / "unused", "train.max_steps=3", "model.freeze_image=true")
    script, config_file, env = prepare_run(tmp_path, cfg)
    two = tmp_path / "two-ranks"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                f"--master_port={free_port()}", str(script)]  # fmt: skip
    ran = subprocess.run(
        torchrun + [str(config_file), f"train.out_dir={two}", "train.batch_size=4"],
        check=False, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    one = tmp_path / "one-process"
    ran = subprocess.run(
        [sys.executable, str(script), str(config_file), f"train.out_dir={one}",
         "train.batch_size=8"],
        check=False, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]

    a, b = logged_losses(two), logged_losses(one)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        for name in ("loss", "query_product", "keyword_prediction"):
            assert a[step][name] == pytest.approx(b[step][name], abs=1e-5), (step, name)
    # DDP's averaged gradients give the single-process update: same weights after 3 steps.
    weights_two = load_file(two / "last" / "model.safetensors")
    weights_one = load_file(one / "last" / "model.safetensors")
    for key in weights_one:
        torch.testing.assert_close(weights_two[key], weights_one[key], rtol=1e-4, atol=1e-5)



@pytest.mark.slow
def test_two_ranks_share_one_clock_for_a_time_budget(demo40, tmp_path, tiny_config):
    # The LR follows the time spent: ranks that read their own clocks would step with
    # different LRs and drift apart, or stop at different steps and hang.
    cfg = tiny_config(demo40, tmp_path / "unused", "train.max_minutes=0.1", "train.epochs=500",
                      "model.freeze_image=true", "train.eval_every=100000",
                      "train.save_every_steps=0")  # fmt: skip
    script, config_file, env = prepare_run(tmp_path, cfg)
    out = tmp_path / "two-ranks"
    ran = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         f"--master_port={free_port()}", str(script), str(config_file),
         f"train.out_dir={out}", "train.batch_size=4"],
        check=False, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "stopped (max_minutes)" in ran.stdout
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert state["run_seconds"] >= 6
    assert state["optimizer"]["param_groups"][0]["lr"] < 0.1 * cfg.train.lr
