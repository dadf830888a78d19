"""Attribute filters: only matching products, and exactly the top k of them, on every index type."""

from __future__ import annotations

import numpy as np
import pytest

from index.index_testing import build
from makevl.data.catalog import Product
from makevl.index.backends.faiss import FaissBackend
from makevl.index.encoders import HashingEncoder
from makevl.index.search import Searcher, UnknownFilterError, parse_filters

COLOURS = ["red", "blue", "green", "black", "white"]
CATEGORIES = ["shirt", "shoes", "bag", "dress", "watch", "cap"]
QUERIES = ["red shirt", "black leather bag", "white running shoes", "summer dress"]


def _products(count: int = 300) -> list[Product]:
    """Titles share words across colours and categories, so filtering changes the ranking."""
    extras = ["cotton", "leather", "running", "summer", "classic", "sport", "slim"]
    return [
        Product(
            id=f"p{i}",
            title=f"{COLOURS[i % 5]} {CATEGORIES[i % 6]} {extras[i % 7]} item{i}",
            image=None,
            attributes={"colour": COLOURS[i % 5], "category": CATEGORIES[i % 6]},
        )
        for i in range(count)
    ]


def _brute_force_scores(products: list[Product], query: str, filters: dict, k: int) -> np.ndarray:
    """The top-k scores over the matching products, computed without the index."""
    matching = [
        p for p in products if all(p.attributes.get(a) in values for a, values in filters.items())
    ]
    encoder = HashingEncoder(32)
    vectors, _, _ = encoder.encode_products(matching)
    scores = vectors @ encoder.encode_queries([query])[0]
    return np.sort(scores)[::-1][:k]


INDEX_TYPES = {
    "flat": {},
    "hnsw-filtered-walk": {"factory": "HNSW32", "exact_threshold": 0},
    "hnsw-small-set-exact": {"factory": "HNSW32", "exact_threshold": 100},
}


@pytest.fixture(scope="module", params=list(INDEX_TYPES))
def searcher(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param) / "index"
    build(folder, _products(), **INDEX_TYPES[request.param])
    return Searcher(folder)


FILTERS = [
    {"colour": ["red"]},
    {"colour": ["red", "black"]},  # one attribute: OR
    {"colour": ["red", "black"], "category": ["bag", "shirt"]},  # two attributes: AND
    {"category": ["watch"], "colour": ["green"]},  # 10 products
]


@pytest.mark.parametrize("filters", FILTERS)
def test_filtered_results_are_exactly_the_top_k_of_the_matching_products(searcher, filters):
    expected_type = "Flat" if searcher.backend.exact_threshold > 300 else "HNSW32"
    assert searcher.manifest["index_type"] == expected_type
    products = _products()
    k = 10
    for query, hits in zip(QUERIES, searcher.search(QUERIES, k=k, filters=filters)):
        assert all(h.attributes[a] in values for h in hits for a, values in filters.items())
        expected = _brute_force_scores(products, query, filters, k)
        assert len(hits) == len(expected) == k
        np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)


def test_a_filter_matching_fewer_than_k_products_returns_all_of_them(searcher):
    filters = {"category": ["watch"], "colour": ["green"]}
    hits = searcher.search(["green watch"], k=50, filters=filters)[0]
    assert sorted(h.id for h in hits) == sorted(
        p.id for p in _products() if p.attributes == {"colour": "green", "category": "watch"}
    )


def test_no_matching_value_means_no_results_and_an_unknown_attribute_is_an_error(searcher):
    assert searcher.search(["red shirt"], k=5, filters={"colour": "purple"}) == [[]]
    assert len(searcher.search(["red shirt"], k=5, filters={"colour": []})[0]) == 5  # no constraint
    with pytest.raises(UnknownFilterError, match=r"'brand'.*'colour', 'category'"):
        searcher.search(["red shirt"], k=5, filters={"brand": ["nike"]})


def test_facets_count_products_per_value(searcher):
    facets = searcher.facets(top=3)
    assert list(facets) == ["colour", "category"]
    assert facets["colour"] == [("black", 60), ("blue", 60), ("green", 60)]  # ties by value
    assert len(searcher.facets()["category"]) == 6


def test_parse_filters():
    assert parse_filters(["colour:red", "colour:navy:blue", "size:"]) == {
        "colour": ["red", "navy:blue"],
        "size": [""],
    }
    for bad in ["red", ":red"]:
        with pytest.raises(ValueError, match="ATTRIBUTE:VALUE"):
            parse_filters([bad])


@pytest.mark.parametrize("exact_threshold", [0, 50])
def test_hnsw_filter_over_a_sparse_allowed_set_is_exact(exact_threshold):
    """An HNSW walk through mostly forbidden nodes comes back short or wrong, so a small allowed
    set (here 40 of 3000) is searched by brute force, whatever the exact threshold."""
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    backend = FaissBackend(16, "HNSW32", exact_threshold=exact_threshold, ef_search=16)
    backend.upsert(np.arange(3000), vectors)
    assert backend.index_type == "HNSW32"  # 3000 vectors: over the exact threshold
    allowed = rng.choice(3000, 40, replace=False)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    scores, ids = backend.search(queries, 10, allowed_ids=allowed)
    exact = queries @ vectors[allowed].T
    best = np.argsort(-exact, axis=1)[:, :10]
    np.testing.assert_array_equal(ids, allowed[best])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, best, axis=1), atol=1e-5)
