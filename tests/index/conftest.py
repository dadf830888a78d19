"""Fixtures: the small catalog of index_testing.py and an index built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from index.index_testing import build, write_catalog


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    return write_catalog(tmp_path / "shop")


@pytest.fixture
def index_dir(tmp_path: Path, catalog: Path) -> Path:
    build(tmp_path / "index", catalog)
    return tmp_path / "index"
