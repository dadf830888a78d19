import numpy as np
import pytest

from index.index_testing import PRODUCTS
from makevl.files import file_sha256
from makevl.index import encoders
from makevl.index.encoders import HashingEncoder
from makevl.index.search import Searcher
from makevl.index.store import ModelMismatchError, read_manifest


def test_hits_carry_what_a_result_shows(index_dir, catalog):
    hit = Searcher(index_dir).search(["red t-shirt"], k=1)[0][0]
    assert hit.id == "p1"
    assert hit.title == "Red cotton t-shirt for men"
    assert hit.image == str((catalog.parent / "images" / "p1.png").resolve())
    assert hit.attributes == {"category": "tshirt"}
    assert list(hit.modality_weights) == ["title", "image", "fused"]
    assert sum(hit.modality_weights.values()) == pytest.approx(1.0, abs=1e-5)
    assert 0 < hit.score <= 1.0 + 1e-6


def test_results_are_sorted_and_k_is_capped(index_dir):
    searcher = Searcher(index_dir)
    hits = searcher.search(["leather"], k=100)[0]
    assert len(hits) == len(PRODUCTS)
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert len(searcher.search(["leather"], k=3)[0]) == 3
    assert searcher.search([], k=3) == []


def test_batch_equals_one_by_one(index_dir):
    searcher = Searcher(index_dir)
    queries = ["red t-shirt", "jeans", "wrist watch", "grey sweater"]
    batch = searcher.search(queries, k=4)
    for query, hits in zip(queries, batch):
        single = searcher.search([query], k=4)[0]
        assert [h.id for h in hits] == [h.id for h in single]


def test_scores_are_inner_products_of_unit_vectors(index_dir):
    searcher = Searcher(index_dir)
    encoder = HashingEncoder(32)
    hit = searcher.search(["green running shoes"], k=1)[0][0]
    product = next(p for p in PRODUCTS if p[0] == hit.id)
    text = f"{product[1]} {product[3]}"
    expected = float(
        encoder.encode_queries(["green running shoes"])[0] @ encoder.encode_queries([text])[0]
    )
    assert hit.score == pytest.approx(expected, abs=1e-5)


def test_other_encoder_is_refused(index_dir):
    with pytest.raises(
        ModelMismatchError, match=r"built with model hashing-v1-dim32.*hashing-v1-dim64.*Rebuild"
    ):
        Searcher(index_dir, encoder=HashingEncoder(64))
    with pytest.raises(ModelMismatchError, match="not comparable"):
        Searcher(index_dir, encoder=HashingEncoder(32), model_hash="f" * 64)


def test_checkpoint_with_other_weights_is_refused(index_dir, monkeypatch, tmp_path):
    """A checkpoint whose model.safetensors hash differs from the manifest's is refused."""
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"other weights")
    other_hash = encoders.checkpoint_hash(weights.parent)
    assert other_hash == file_sha256(weights) and len(other_hash) == 64

    def fake_load(path):
        return (
            HashingEncoder(32),
            {"type": "checkpoint", "path": str(path)},
            encoders.checkpoint_hash(path),
            {},
        )

    monkeypatch.setattr("makevl.index.search.load_checkpoint_encoder", fake_load)
    with pytest.raises(
        ModelMismatchError, match=f"queries would be encoded by model {other_hash[:16]}"
    ):
        Searcher(index_dir, checkpoint=weights.parent)


def test_encoder_with_wrong_dim_is_caught_at_search(index_dir):
    class Wrong(HashingEncoder):
        model_hash = None

    searcher = Searcher(index_dir, encoder=Wrong(16))
    with pytest.raises(ModelMismatchError, match="dim 32"):
        searcher.search(["red"], k=1)


def test_hnsw_search_parameters_are_applied(tmp_path, catalog):
    from index.index_testing import build

    build(tmp_path / "hnsw", catalog, factory="HNSW32", exact_threshold=0)
    import faiss

    searcher = Searcher(tmp_path / "hnsw", ef_search=77)
    hnsw = faiss.downcast_index(faiss.downcast_index(searcher.backend.index).index)
    assert hnsw.hnsw.efSearch == 77
    assert read_manifest(tmp_path / "hnsw")["index_type"] == "HNSW32"


def test_hashing_encoder_is_deterministic_and_unit_norm():
    encoder = HashingEncoder(64)
    a = encoder.encode_queries(["Blue Jeans", "", "blue jeans"])
    assert a.shape == (3, 64) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a[[0, 2]], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(a[0], a[2])  # case-insensitive words
    assert not a[1].any()  # no words, no direction
