import math

import numpy as np
import pytest

from makevl.evaluation.metrics import (
    bootstrap_ci,
    exact_search,
    majority_label,
    metric_names,
    query_category,
    query_metrics,
    top_k,
)

POOL = ["a", "b", "c", "d", "e"]


def test_five_product_example_by_hand():
    # Scores put the pool in order a > b > c > d > e; b (grade 2) and d (grade 1) are relevant.
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    ranking = [POOL[i] for i in top_k(scores, 5)[0]]
    assert ranking == ["a", "b", "c", "d", "e"]
    m = query_metrics(ranking, {"b": 2.0, "d": 1.0}, ks=(1, 5))
    assert m["recall@1"] == 0.0  # a is not relevant
    assert m["recall@5"] == 1.0  # both relevant products in the top 5
    assert m["hit@1"] == 0.0 and m["hit@5"] == 1.0
    # DCG  = 2/log2(1+2) + 1/log2(1+4) = 1.26186 + 0.43068 = 1.69254  (b at rank 2, d at rank 4)
    # IDCG = 2/log2(1+1) + 1/log2(1+2) = 2 + 0.63093 = 2.63093        (b then d)
    # NDCG@10 = 1.69254 / 2.63093 = 0.64332
    assert m["ndcg@10"] == pytest.approx(0.64332, abs=1e-5)
    assert m["mrr@10"] == 0.5  # first relevant at rank 2
    # AP = (P@2 + P@4) / 2 = (1/2 + 2/4) / 2 = 0.5
    assert m["map@100"] == pytest.approx(0.5)


def test_perfect_ranking_scores_one():
    m = query_metrics(["b", "d", "a"], {"b": 2.0, "d": 1.0})
    assert m["ndcg@10"] == pytest.approx(1.0)
    assert m["map@100"] == pytest.approx(1.0)
    assert m["mrr@10"] == 1.0
    assert m["recall@5"] == 1.0


def test_graded_order_matters_for_ndcg_only():
    # Both relevant products in the top 2, but the lower grade first.
    m = query_metrics(["d", "b"], {"b": 2.0, "d": 1.0})
    assert m["recall@5"] == 1.0 and m["map@100"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))


def test_ties_break_by_pool_order():
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]])
    assert top_k(scores, 3).tolist() == [[1, 3, 0]]
    assert top_k(scores, 4).tolist() == [[1, 3, 0, 2]]
    # Same answer on every call, and equal to a full stable sort.
    rng = np.random.default_rng(0)
    many_ties = rng.integers(0, 4, size=(20, 300)).astype(np.float32)
    expected = np.argsort(-many_ties, axis=1, kind="stable")[:, :17]
    assert (top_k(many_ties, 17) == expected).all()


def test_blockwise_search_equals_full_sort_with_ties():
    rng = np.random.default_rng(1)
    queries = rng.integers(-2, 3, size=(9, 4)).astype(np.float32)  # small ints: many ties
    products = rng.integers(-2, 3, size=(500, 4)).astype(np.float32)
    scores, indices = exact_search(queries, products, 25, query_block=4, product_block=64)
    full = queries @ products.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :25]
    assert (indices == expected).all()
    assert np.allclose(scores, np.take_along_axis(full, expected, axis=1))


def test_search_rejects_bad_input():
    with pytest.raises(ValueError, match="dimension mismatch"):
        exact_search(np.zeros((2, 3)), np.zeros((4, 5)), 2)
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([[0.1, np.nan]]), 1)


def test_query_without_relevant_product_is_refused():
    with pytest.raises(ValueError, match="no relevant product"):
        query_metrics(["a", "b"], {})
    with pytest.raises(ValueError, match="no relevant product"):
        query_metrics(["a", "b"], {"a": 0.0})  # label 0 is judged non-relevant


def test_k_larger_than_pool():
    assert top_k(np.array([[0.2, 0.7, 0.1]]), 100).tolist() == [[1, 0, 2]]
    _, indices = exact_search(np.ones((1, 2)), np.eye(2), 50)
    assert indices.shape == (1, 2)
    m = query_metrics(["x", "a", "y"], {"a": 1.0, "z": 1.0}, ks=(1, 100))
    assert m["recall@100"] == 0.5  # z was never retrieved; denominator stays |relevant|
    assert m["mrr@10"] == 0.5


def test_duplicate_ids_earn_gain_once():
    m = query_metrics(["b", "b", "a"], {"a": 1.0, "b": 1.0}, ks=(1, 2, 3))
    assert m["recall@2"] == 0.5  # the second "b" wastes a slot
    assert m["recall@3"] == 1.0
    # Gains [1, 0, 1]: DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3)
    assert m["ndcg@10"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert m["map@100"] == pytest.approx((1 + 2 / 3) / 2)
    assert query_metrics(["b", "b", "b"], {"b": 1.0, "a": 1.0})["recall@5"] == 0.5


def test_metric_names_match_query_metrics():
    assert list(query_metrics(["a"], {"a": 1.0}, ks=(1, 10))) == metric_names((1, 10))


def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(0)
    widths = []
    for n in (20, 2000):
        values = rng.integers(0, 2, size=(n, 2)).astype(float)
        low, high = bootstrap_ci(values, n_resamples=1000, seed=0)
        mean = values.mean(axis=0)
        assert (low <= mean).all() and (mean <= high).all()
        widths.append((high - low)[0])
    assert widths[1] < widths[0] / 3  # ~1/sqrt(100) narrower in theory


def test_bootstrap_is_seeded():
    values = np.random.default_rng(3).random((50, 1))
    first, again, other = (np.stack(bootstrap_ci(values, seed=s)) for s in (7, 7, 8))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_query_category_majority_with_stable_ties():
    attribute = {"a": "shoes", "b": "shoes", "c": "bags", "d": None}.get
    assert query_category({"a": 1, "b": 1, "c": 1}, attribute) == "shoes"
    assert query_category({"a": 1, "c": 1}, attribute) == "bags"  # tie: alphabetical
    assert query_category({"d": 1}, attribute) == "(none)"
    assert query_category({"a": 0, "c": 1}, attribute) == "bags"  # only relevant ones vote
    assert majority_label([]) == ""
