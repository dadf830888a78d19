"""The vector backend protocol, run against every backend configuration in CONFIGS.

A new backend adds its entry to CONFIGS; the FAISS-only tests are at the end.
"memory" is a test-only backend (memory_backend.py) that shows the seam takes
any backend, down to a whole index built, updated and searched through it.
"""

from __future__ import annotations

import numpy as np
import pytest

from index.index_testing import PRODUCTS, build
from makevl.data.catalog import iter_catalog
from makevl.index.backends import BACKENDS, create_backend, load_backend
from makevl.index.build import update_index
from makevl.index.errors import IndexFileError
from makevl.index.search import Searcher
from makevl.index.store import read_manifest

DIM = 16
# name: (backend, creation options)
CONFIGS = {
    "faiss-flat": ("faiss", {"factory": "HNSW32", "exact_threshold": 1000}),
    "faiss-hnsw": ("faiss", {"factory": "HNSW32", "exact_threshold": 0}),
    "faiss-ivf": ("faiss", {"factory": "IVF2,Flat", "exact_threshold": 0}),
    "memory": ("memory", {}),
    # Milvus Lite in this process; a relative .db path lands beside the version folder
    "milvus-flat": ("milvus", {"uri": "milvus.db", "exact_threshold": 1000}),
    "milvus-hnsw": ("milvus", {"uri": "milvus.db", "exact_threshold": 0}),
}


@pytest.fixture(autouse=True)
def memory_backend(monkeypatch):
    """Register the test-only backend, as a new backend's line in BACKENDS would."""
    monkeypatch.setitem(BACKENDS, "memory", "index.backends.memory_backend:MemoryBackend")


@pytest.fixture(params=sorted(CONFIGS))
def config(request):
    return CONFIGS[request.param]


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


IDS = np.arange(100, 140, dtype=np.int64)  # not 0..n-1, so ids and rows cannot be mixed up
VECTORS = unit_vectors(len(IDS), seed=0)


@pytest.fixture
def folder(tmp_path):
    """Where the backend will be saved: a version folder, as the index store gives it."""
    (tmp_path / "version").mkdir()
    return tmp_path / "version"


@pytest.fixture
def backend(config, folder):
    name, options = config
    backend = create_backend(name, DIM, folder, **options)
    backend.upsert(IDS, VECTORS)
    backend.save(folder)  # a Milvus collection takes its index type on save
    return backend


def exact_top(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]]


def test_add_then_search_finds_each_vector(backend):
    assert (backend.count, backend.dim) == (len(IDS), DIM)
    scores, ids = backend.search(VECTORS, 1)
    np.testing.assert_array_equal(ids[:, 0], IDS)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_search_returns_exact_top_k_best_first(backend):
    queries = unit_vectors(5, seed=1)
    scores, ids = backend.search(queries, 5)
    assert scores.shape == ids.shape == (5, 5) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, exact_top(queries, IDS, VECTORS, 5))
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_upsert_replaces_an_id(backend):
    new = unit_vectors(1, seed=2)
    backend.upsert(IDS[[3]], new)
    assert backend.count == len(IDS)
    scores, ids = backend.search(new, 1)
    assert ids[0, 0] == IDS[3] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    _, ids = backend.search(VECTORS[[3]], len(IDS))
    assert list(ids[0]).count(IDS[3]) == 1 and ids[0, 0] != IDS[3]  # the old vector is gone


def test_delete_removes_ids_and_ignores_unknown_ones(backend):
    backend.delete(np.array([IDS[0], IDS[5], 999], dtype=np.int64))
    assert backend.count == len(IDS) - 2
    _, ids = backend.search(VECTORS[[0, 5]], len(IDS))
    assert not np.isin(ids, IDS[[0, 5]]).any()
    backend.delete(IDS)
    assert backend.count == 0
    _, ids = backend.search(VECTORS[:1], 3)
    assert (ids == -1).all()


def test_filtered_search_is_the_exact_top_k_of_the_allowed_ids(backend):
    allowed = IDS[[1, 4, 9, 16, 25, 36]]
    queries = unit_vectors(4, seed=3)
    rows = np.searchsorted(IDS, allowed)
    _, ids = backend.search(queries, 3, allowed_ids=allowed)
    np.testing.assert_array_equal(ids, exact_top(queries, allowed, VECTORS[rows], 3))
    _, ids = backend.search(queries, 8, allowed_ids=allowed)  # more asked than allowed
    assert (ids[:, 6:] == -1).all() and set(ids[:, :6].ravel()) == set(allowed)


def test_save_load_round_trip(backend, config, folder):
    name, _ = config
    names = backend.save(folder)
    assert all((folder / n).is_file() for n in names)
    queries = unit_vectors(3, seed=4)
    for mmap in (True, False):
        loaded = load_backend(name, folder, mmap=mmap, **backend.options)
        assert (loaded.count, loaded.dim, loaded.index_type) == (
            backend.count,
            backend.dim,
            backend.index_type,
        )
        np.testing.assert_array_equal(loaded.search(queries, 5)[1], backend.search(queries, 5)[1])
    loaded.delete(IDS[:2])  # a loaded backend can be changed
    assert loaded.count == len(IDS) - 2
    assert load_backend(name, folder, **backend.options).count == len(IDS)  # the saved one not


def test_upsert_checks_shapes(backend):
    with pytest.raises(ValueError, match=rf"shape \(2, {DIM}\)"):
        backend.upsert(IDS[:2], VECTORS[:3])


def test_an_index_works_with_any_backend(config, tmp_path, catalog):
    name, options = config
    index = tmp_path / "index"
    report = build(index, catalog, backend_name=name, **options)
    assert read_manifest(index)["backend"] == name and report.count == len(PRODUCTS)
    assert Searcher(index, nprobe=4).search(["red t-shirt"], k=1)[0][0].id == "p1"
    update_index(index, delete=["p1"], progress=False)
    update_index(index, add=list(iter_catalog(catalog))[:1], progress=False)  # p1 back
    hits = Searcher(index, nprobe=4).search(["red t-shirt"], k=len(PRODUCTS))[0]
    assert hits[0].id == "p1" and len({h.id for h in hits}) == len(PRODUCTS)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown vector backend 'nosuch'.*'faiss'"):
        create_backend("nosuch", DIM)


# FAISS only


def test_index_type_follows_the_size():
    backend = create_backend("faiss", DIM, factory="HNSW32", exact_threshold=30)
    backend.upsert(IDS[:20], VECTORS[:20])
    assert backend.index_type == "Flat"
    backend.upsert(IDS[20:], VECTORS[20:])
    assert backend.index_type == "HNSW32"
    backend.delete(IDS[:15])
    assert backend.index_type == "Flat" and backend.count == len(IDS) - 15
    assert backend.options == {"factory": "HNSW32", "exact_threshold": 30}


def test_bad_factory_string_fails_at_creation():
    with pytest.raises(ValueError, match="FAISS factory string 'NoSuchIndex7'"):
        create_backend("faiss", DIM, factory="NoSuchIndex7")


def faiss_backend():
    backend = create_backend("faiss", DIM)
    backend.upsert(IDS, VECTORS)
    return backend


def test_unreadable_faiss_file_is_named(tmp_path):
    faiss_backend().save(tmp_path)
    (tmp_path / "index.faiss").write_bytes(b"not a faiss index")
    with pytest.raises(IndexFileError, match="index.faiss: not a readable FAISS index"):
        load_backend("faiss", tmp_path)


def test_vectors_of_another_index_are_refused(tmp_path):
    faiss_backend().save(tmp_path)
    np.save(tmp_path / "vectors.npy", VECTORS[:3])
    with pytest.raises(IndexFileError, match="vectors.npy has shape"):
        load_backend("faiss", tmp_path)
