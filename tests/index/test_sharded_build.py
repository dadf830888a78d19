"""``makevl index build`` under torchrun: 2 CPU ranks (gloo) give the index 1 process gives."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index.index_testing import PRODUCTS, write_catalog
from index.test_checkpoint_index import save_tiny_checkpoint
from makevl.index.store import load_stored

ROOT = Path(__file__).resolve().parents[2]
# A repeated id and an empty title (the encoder rejects it): skips the ranks must agree on.
ROWS = [*PRODUCTS, ("p3", "Duplicate of p3", (0, 0, 0), "shoes"), ("p13", " ", (9, 9, 9), "x")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build(out: Path, model: list[str], catalog: Path, ranks: int) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    launcher = [sys.executable]
    if ranks > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
                     f"--master_port={free_port()}"]  # fmt: skip
    command = [*launcher, "-m", "makevl.cli", "index", "build", *model, "--catalog", str(catalog),
               "--out", str(out), "--quiet", "--batch-size", "4"]  # fmt: skip
    ran = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return ran.stdout


def assert_same_index(a: Path, b: Path) -> None:
    one, two = load_stored(a), load_stored(b)
    columns = ["vector_id", "id", "title", "attributes"]
    assert one.table.select(columns).equals(two.table.select(columns))
    np.testing.assert_allclose(
        np.stack(one.table.column("modality_weights").to_pylist()),
        np.stack(two.table.column("modality_weights").to_pylist()),
        atol=1e-5,
    )
    np.testing.assert_array_equal(one.backend.ids, two.backend.ids)
    np.testing.assert_allclose(one.backend.vectors, two.backend.vectors, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("encoder", ["hashing", "checkpoint"])
def test_two_ranks_build_the_index_one_process_builds(tmp_path, encoder):
    catalog = write_catalog(tmp_path / "shop", ROWS)
    model = ["--hashing-encoder", "32"]
    if encoder == "checkpoint":
        clean = write_catalog(tmp_path / "clean")  # a model's shop has unique ids
        model = ["--checkpoint", str(save_tiny_checkpoint(tmp_path / "ckpt", clean, seed=0))]
    one = build(tmp_path / "one", model, catalog, ranks=1)
    two = build(tmp_path / "two", model, catalog, ranks=2)
    assert_same_index(tmp_path / "one", tmp_path / "two")
    counts = [re.search(r"\d+ products .*warnings \d+", out).group(0) for out in (one, two)]
    assert counts[0] == counts[1] and "skipped 0" not in counts[0]
    assert two.count("products (") == 1 and two.count("duplicate product id 'p3'") == 1
