"""Shared fixtures: small catalogs with real image files, written per test."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from helpers import write_image

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def small_catalog(tmp_path: Path) -> Path:
    """A clean 4-product CSV catalog with PNG images and a matching query log."""
    rows = [
        ("p1", "Red cotton t-shirt for men", (220, 20, 20), "tshirt", "red"),
        ("p2", "Blue denim jeans slim fit", (20, 20, 220), "jeans", "blue"),
        ("p3", "Green running shoes lightweight", (20, 200, 20), "shoes", "green"),
        ("p4", "Black leather handbag", (10, 10, 10), "bag", "black"),
    ]
    with (tmp_path / "catalog.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "image", "keywords", "category", "colour"])
        for pid, title, colour, cat, col in rows:
            write_image(tmp_path / "images" / f"{pid}.png", colour)
            w.writerow([pid, title, f"images/{pid}.png", f"{cat};{col}", cat, col])
    with (tmp_path / "queries.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["query", "product_id", "label"])
        w.writerows([("red tshirt", "p1", 1), ("jeans", "p2", 2), ("running shoes", "p3", 1)])
    return tmp_path / "catalog.csv"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run up to 10x faster single-threaded on a shared 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
