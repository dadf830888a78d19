"""Tiny shops and configs for the training tests: tiny random backbones, 32 px images."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from helpers import TINY_MODEL_OVERRIDES
from makevl.config import RunConfig, load_config
from makevl.data.demo import make_demo_shop


@pytest.fixture(scope="session")
def demo40(tmp_path_factory) -> Path:
    """A 40-product demo shop (about 55 train pairs), generated once per session."""
    out = tmp_path_factory.mktemp("demo40")
    make_demo_shop(out, n_products=40, image_size=32)
    return out / "catalog.csv"


@pytest.fixture(scope="session")
def demo300(tmp_path_factory) -> Path:
    """A 300-product demo shop (about 780 train pairs, 27 val products): enough to learn on."""
    out = tmp_path_factory.mktemp("demo300")
    make_demo_shop(out, n_products=300, image_size=32)
    return out / "catalog.csv"


@pytest.fixture
def demo_copy(demo40: Path, tmp_path: Path) -> Path:
    """A private copy of the 40-product shop, for tests that break its files."""
    target = tmp_path / "shop"
    shutil.copytree(demo40.parent, target)
    return target / "catalog.csv"


@pytest.fixture
def tiny_config():
    """``tiny_config(catalog, out_dir, "train.lr=1e-3", ...)`` -> a RunConfig, everything tiny."""
    return make_tiny_config


def make_tiny_config(catalog: Path, out_dir: Path, *overrides: str) -> RunConfig:
    return load_config(
        None,
        [
            "data.preset=demo",
            f"data.catalog={catalog}",
            *TINY_MODEL_OVERRIDES,
            f"train.out_dir={out_dir}",
            "train.batch_size=8",
            "train.epochs=1",
            "train.warmup_steps=2",
            "train.log_every=1",
            "train.device=cpu",
            *overrides,
        ],
    )
