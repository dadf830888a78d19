"""Versions a crashed build or update left behind are removed by the next writer."""

from __future__ import annotations

import os

import pytest

from index.index_testing import build
from makevl.index.build import update_index
from makevl.index.search import Searcher
from makevl.index.store import IndexStoreError, new_version, versions_dir


def crashed_writes(index_dir):
    """What a kill -9 mid-build leaves: a half-written version and a link never renamed."""
    version = new_version(index_dir)
    (version / "products.parquet").write_bytes(b"half written")
    link = index_dir.with_name(f".{index_dir.name}.link-deadbeef")
    os.symlink(version, link)
    return version, link


def test_next_build_removes_unpublished_versions_even_when_it_fails(index_dir, tmp_path):
    published = index_dir.resolve()
    version, link = crashed_writes(index_dir)
    with pytest.raises(IndexStoreError, match="no product could be indexed"):
        build(index_dir, [])  # the next build fails too: the crash's debris still goes
    assert not version.exists() and not os.path.lexists(link)
    assert [p for p in versions_dir(index_dir).iterdir() if p.is_dir()] == [published]
    assert len(Searcher(index_dir)) == 12  # the published index is untouched


def test_next_update_removes_unpublished_versions(index_dir):
    version, link = crashed_writes(index_dir)
    update_index(index_dir, delete=["p1"], progress=False)
    assert not version.exists() and not os.path.lexists(link)
    assert len([p for p in versions_dir(index_dir).iterdir() if p.is_dir()]) == 1
    assert len(Searcher(index_dir)) == 11
