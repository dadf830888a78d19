"""The BM25 channel: its scores, its files, its updates, and hybrid search with it."""

from __future__ import annotations

import numpy as np
import pytest

from index.index_testing import PRODUCTS, build
from makevl.data.catalog import Product, iter_catalog
from makevl.data.text import bm25_tokens
from makevl.index.build import update_index
from makevl.index.encoders import HashingEncoder
from makevl.index.lexical import Fusion, LexicalIndex, product_text
from makevl.index.search import NoLexicalChannelError, Searcher

TEXTS = [
    "red cotton shirt for men",
    "blue denim jeans",
    "red red summer dress",
    "Acme ZX-9000 camera",
    "red running shoes red sole",
]


def test_bm25_ranks_as_bm25s_does():
    import bm25s

    lexical = LexicalIndex.from_texts(TEXTS, np.arange(10, 15))
    reference = bm25s.BM25(k1=1.5, b=0.75)  # Lucene's idf; its scores omit the (k1 + 1) factor
    reference.index([bm25_tokens(t) for t in TEXTS], show_progress=False)
    for query in ["red dress", "red", "zx 9000 camera", "men shoes"]:
        ids, scores = lexical.search([query], k=10)[0]
        expected = reference.get_scores(bm25_tokens(query)) * 2.5
        matched = np.flatnonzero(expected > 0)
        assert sorted(ids.tolist()) == sorted((matched + 10).tolist())  # only rows with a term
        np.testing.assert_allclose(scores, expected[ids - 10], rtol=1e-5)
        assert list(scores) == sorted(scores, reverse=True)


def test_allowed_ids_and_ties_in_row_order():
    lexical = LexicalIndex.from_texts(["red hat", "red cap", "red hat"], np.array([7, 3, 5]))
    assert lexical.search(["red"], k=3)[0][0].tolist() == [7, 3, 5]
    assert lexical.search(["red hat"], k=3, allowed_ids=np.array([5, 3]))[0][0].tolist() == [5, 3]
    assert lexical.search(["unknown words"], k=3)[0][0].tolist() == []


def test_save_load_and_updates_equal_a_fresh_build(tmp_path):
    lexical = LexicalIndex.from_texts(TEXTS, np.arange(5))
    updated = LexicalIndex.concatenate(
        [lexical.without(np.array([1, 3])), LexicalIndex.from_texts(["green denim cap"], [9])]
    )
    updated.save(tmp_path)
    loaded = LexicalIndex.load(tmp_path)
    fresh = LexicalIndex.from_texts([TEXTS[0], TEXTS[2], TEXTS[4], "green denim cap"], [0, 2, 4, 9])
    for query in ["red", "denim", "camera", "green cap"]:
        got, want = loaded.search([query], 5)[0], fresh.search([query], 5)[0]
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-6)


def test_product_text_is_title_and_keywords():
    product = Product("p", "Acme kettle", None, keywords=["steel", "1.7 l"])
    assert product_text(product) == "Acme kettle steel 1.7 l"


def test_fusion_is_weighted_reciprocal_rank():
    fused = dict(Fusion(vector_weight=1, lexical_weight=2, rrf_k=10).fuse(["a", "b"], ["b", "c"]))
    assert fused == pytest.approx({"a": 1 / 11, "b": 1 / 12 + 2 / 11, "c": 2 / 12})
    assert [item for item, _ in Fusion(vector_weight=0).fuse(["a"], ["c", "b"])] == ["c", "b"]
    with pytest.raises(ValueError, match="not both 0"):
        Fusion(vector_weight=0, lexical_weight=0)


class ModelNumberBlind(HashingEncoder):
    """A vector model that never learned model numbers: it turns products whose title holds
    a digit away from every query, so the vector channel ranks them last."""

    def encode_products(self, products, batch_size=64, on_error=None):
        products = list(products)
        vectors, weights, ids = super().encode_products(products, batch_size, on_error)
        digits = np.array([any(c.isdigit() for c in p.title) for p in products])
        vectors[digits] *= -1
        return vectors, weights, ids


@pytest.fixture
def model_number_index(tmp_path, catalog):
    products = list(iter_catalog(catalog))
    products.append(Product("zx", "ZX-9000", None, {"category": "camera"}))
    build(tmp_path / "index", products, encoder=ModelNumberBlind(32))
    return tmp_path / "index"


def test_hybrid_ranks_an_exact_title_match_first(model_number_index):
    searcher = Searcher(model_number_index, encoder=ModelNumberBlind(32))
    vector = [h.id for h in searcher.search(["ZX-9000"], k=20)[0]]
    assert vector.index("zx") == len(PRODUCTS)  # the vector channel ranks it last
    hybrid = searcher.search(["ZX-9000"], k=5, mode="hybrid")[0]
    assert hybrid[0].id == "zx" and hybrid[0].title == "ZX-9000"
    assert hybrid[0].score > hybrid[1].score
    lexical_only = searcher.search(["zx 9000"], k=5, mode="hybrid", fusion=Fusion(vector_weight=0))
    assert [h.id for h in lexical_only[0]] == ["zx"]
    filtered = searcher.search(["ZX-9000"], k=5, mode="hybrid", filters={"category": "shoes"})[0]
    assert {h.id for h in filtered} == {"p3", "p6"}


def test_the_lexical_channel_follows_add_and_delete(index_dir, catalog):
    new = Product("k1", "Acme QX-77 kettle", None, {"category": "kitchen"}, keywords=["steel"])
    update_index(index_dir, add=[new], progress=False)
    query = "qx 77 steel running shoes"

    def lexical_hits(searcher: Searcher) -> set[str]:
        found = searcher.lexical.search([query], k=5)[0][0]
        return {searcher.ids[searcher.row_of_vector[v]] for v in found}

    searcher = Searcher(index_dir)
    assert len(searcher.lexical) == len(searcher) == len(PRODUCTS) + 1
    assert lexical_hits(searcher) == {"k1", "p3"}
    assert searcher.search(["qx 77 steel"], k=1, mode="hybrid")[0][0].id == "k1"
    update_index(index_dir, delete=["k1", "p3"], progress=False)
    searcher = Searcher(index_dir)
    assert len(searcher.lexical) == len(PRODUCTS) - 1
    assert lexical_hits(searcher) == set()


def test_hybrid_on_an_index_without_the_lexical_channel_says_rebuild(index_dir, monkeypatch):
    searcher = Searcher(index_dir)
    monkeypatch.setattr(searcher, "lexical", None)
    with pytest.raises(NoLexicalChannelError, match="rebuild"):
        searcher.search(["red"], k=3, mode="hybrid")
    assert searcher.search(["red"], k=3)[0]  # vector search still works
