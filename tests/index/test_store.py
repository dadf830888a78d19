import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from index.index_testing import PRODUCTS, build
from makevl.data.catalog import iter_catalog
from makevl.files import file_sha256
from makevl.index.backends import create_backend
from makevl.index.build import update_index
from makevl.index.encoders import HashingEncoder
from makevl.index.search import Searcher
from makevl.index.store import (
    IndexFileError,
    IndexStoreError,
    load_stored,
    read_manifest,
    versions_dir,
)


def test_index_dir_is_a_link_to_one_version(index_dir):
    assert index_dir.is_symlink()
    versions = [p for p in versions_dir(index_dir).iterdir() if p.is_dir()]
    assert versions == [index_dir.resolve()]
    update_index(index_dir, delete=["p1"], progress=False)
    versions = [p for p in versions_dir(index_dir).iterdir() if p.is_dir()]
    assert versions == [index_dir.resolve()]  # the old version is gone


@pytest.mark.parametrize("name", ["index.faiss", "vectors.npy", "ids.npy", "products.parquet"])
def test_corrupt_file_is_named(index_dir, name):
    path = index_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=f"{name}: checksum mismatch.*corrupt"):
        Searcher(index_dir)


@pytest.mark.parametrize("name", ["index.faiss", "products.parquet"])
def test_missing_file_is_named(index_dir, name):
    (index_dir / name).unlink()
    with pytest.raises(IndexFileError, match=f"{name}: missing"):
        Searcher(index_dir)


def test_missing_or_corrupt_manifest_is_named(index_dir, tmp_path):
    with pytest.raises(IndexFileError, match="manifest.json: not found"):
        Searcher(tmp_path / "shop")
    with pytest.raises(IndexFileError, match="no such index directory"):
        Searcher(tmp_path / "nowhere")
    (index_dir / "manifest.json").write_text("{not json")
    with pytest.raises(IndexFileError, match="manifest.json: corrupt manifest"):
        Searcher(index_dir)


def test_refuses_to_replace_a_folder_that_is_not_an_index(tmp_path, catalog):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(IndexStoreError, match="not a makevl index"):
        build(folder, catalog)
    assert (folder / "notes.txt").read_text() == "precious"


def test_replaces_a_plain_index_folder(index_dir, tmp_path, catalog):
    """An index copied with links followed is a plain folder; rebuilding it still works."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for path in index_dir.iterdir():
        (plain / path.name).write_bytes(path.read_bytes())
    assert len(Searcher(plain)) == len(PRODUCTS)
    build(plain, list(iter_catalog(catalog))[:3])
    assert plain.is_symlink() and len(Searcher(plain)) == 3


class FailingEncoder(HashingEncoder):
    """Encodes the first chunk, then fails like a crash half way through a build."""

    def __init__(self) -> None:
        super().__init__(32)
        self.calls = 0

    def encode_products(self, products, batch_size=64, on_error=None):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("simulated crash")
        return super().encode_products(products, batch_size, on_error)


def test_failed_build_leaves_previous_index_intact(index_dir, catalog):
    before = read_manifest(index_dir)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(index_dir, list(iter_catalog(catalog)) * 2, FailingEncoder(), chunk_size=4)
    assert read_manifest(index_dir) == before
    assert Searcher(index_dir).search(["red t-shirt"], k=1)[0][0].id == "p1"
    assert [p for p in versions_dir(index_dir).iterdir() if p.is_dir()] == [index_dir.resolve()]


def test_failed_update_leaves_previous_index_intact(index_dir, catalog):
    before = read_manifest(index_dir)
    encoder = FailingEncoder()
    with pytest.raises(RuntimeError, match="simulated crash"):
        update_index(
            index_dir,
            add=iter_catalog(catalog),
            delete=["p3"],
            encoder=encoder,
            chunk_size=4,
            progress=False,
        )
    assert read_manifest(index_dir) == before
    assert Searcher(index_dir).product("p3") is not None


KILLED_BUILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    from index.index_testing import build
    from makevl.data.catalog import iter_catalog
    from makevl.index.encoders import HashingEncoder

    class SlowEncoder(HashingEncoder):
        def encode_products(self, products, batch_size=64, on_error=None):
            Path(sys.argv[2]).touch()  # tell the test we are mid-build
            time.sleep(60)

    build(Path(sys.argv[1]), iter_catalog(Path(sys.argv[4])), SlowEncoder(32))
    """
)


def test_killed_build_leaves_previous_index_intact(index_dir, catalog, tmp_path):
    before = read_manifest(index_dir)
    marker = tmp_path / "started"
    tests_dir = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_BUILD,
            str(index_dir),
            str(marker),
            str(tests_dir),
            str(catalog),
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the build never started encoding"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert read_manifest(index_dir) == before
    assert Searcher(index_dir).search(["red t-shirt"], k=1)[0][0].id == "p1"
    # The next write clears the half-written version the killed build left behind.
    assert len([p for p in versions_dir(index_dir).iterdir() if p.is_dir()]) == 2
    update_index(index_dir, delete=["p1"], progress=False)
    assert [p for p in versions_dir(index_dir).iterdir() if p.is_dir()] == [index_dir.resolve()]


def test_second_writer_is_refused(index_dir):
    from makevl.index.store import writer_lock

    with writer_lock(index_dir), pytest.raises(IndexStoreError, match="another build or update"):
        update_index(index_dir, delete=["p1"], progress=False)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF2,Flat"])
def test_memory_mapped_load_matches_plain_load(tmp_path, catalog, factory):
    build(tmp_path / "index", catalog, factory=factory, exact_threshold=0)
    mapped = load_stored(tmp_path / "index", mmap=True).backend
    plain = load_stored(tmp_path / "index", mmap=False).backend
    queries = HashingEncoder(32).encode_queries(["red t-shirt", "shoes"])
    np.testing.assert_array_equal(mapped.search(queries, 5)[1], plain.search(queries, 5)[1])


def _rewrite_manifest(version, change) -> None:
    manifest = json.loads((version / "manifest.json").read_text())
    change(manifest)
    (version / "manifest.json").write_text(json.dumps(manifest))


def test_row_count_mismatch_is_reported(index_dir):
    """A consistent-looking manifest over files from two different builds is caught."""
    version = index_dir.resolve()
    names = create_backend("faiss", 32).save(version)

    def checksums(manifest):
        for name in names:
            manifest["files"][name]["sha256"] = file_sha256(version / name)

    _rewrite_manifest(version, checksums)
    with pytest.raises(IndexFileError, match="faiss index has 0 vectors.*12 rows"):
        Searcher(index_dir)


def test_manifest_without_backend_loads_as_faiss(index_dir):
    def drop_backend(manifest):
        del manifest["backend"]

    _rewrite_manifest(index_dir.resolve(), drop_backend)
    assert Searcher(index_dir).search(["red t-shirt"], k=1)[0][0].id == "p1"


def test_unknown_backend_is_named(index_dir):
    _rewrite_manifest(index_dir.resolve(), lambda manifest: manifest.update(backend="nosuch"))
    with pytest.raises(ValueError, match="unknown vector backend 'nosuch'"):
        Searcher(index_dir)


def test_index_of_an_older_format_is_refused(index_dir):
    _rewrite_manifest(index_dir.resolve(), lambda manifest: manifest.update(format=1))
    with pytest.raises(IndexStoreError, match="index format 1, this makevl reads 2; rebuild"):
        Searcher(index_dir)
