"""Query augmentation: the promised variants, drawn deterministically from the sample's seed."""

import random

from makevl.config import TrainConfig
from makevl.data.catalog import Product
from makevl.training.augment import QueryAugmenter
from makevl.training.data import PairDataset

QUERY = "black casual tshirts for men"


def _variants(augmenter: QueryAugmenter, n: int = 60) -> list[str]:
    return [augmenter(QUERY, random.Random(seed)) for seed in range(n)]


def test_each_change_gives_what_it_promises():
    dropped = _variants(QueryAugmenter(drop_word=1.0))
    assert all(len(v.split()) == 4 and set(v.split()) < set(QUERY.split()) for v in dropped)
    assert len(set(dropped)) == 5  # every word can go

    reordered = _variants(QueryAugmenter(reorder=1.0))
    assert all(sorted(v.split()) == sorted(QUERY.replace(" for", "").split()) for v in reordered)
    assert len(set(reordered)) > 5

    misspelt = _variants(QueryAugmenter(typo=1.0))
    for variant in misspelt:
        changed = [(a, b) for a, b in zip(QUERY.split(), variant.split()) if a != b]
        assert len(changed) == 1 and abs(len(changed[0][0]) - len(changed[0][1])) <= 1
    assert _variants(QueryAugmenter()) == [QUERY] * 60  # all rates 0: untouched


def test_same_seed_same_variant_and_rates_are_respected():
    augmenter = QueryAugmenter(typo=0.5, drop_word=0.5, reorder=0.5)
    assert _variants(augmenter) == _variants(augmenter)
    changed = sum(v != QUERY for v in _variants(augmenter, 400))
    assert 0.75 * 400 < changed < 0.95 * 400  # 1 - 0.5**3 = 0.875 of them change


def test_config_builds_it_only_when_a_rate_is_set():
    assert QueryAugmenter.from_config(TrainConfig()) is None
    assert QueryAugmenter.from_config(TrainConfig(augment_typo=0.3)) == QueryAugmenter(typo=0.3)
    assert QueryAugmenter.for_pseudo_queries(TrainConfig(augment_typo=0.3)) is None
    pseudo = QueryAugmenter.for_pseudo_queries(TrainConfig(augment_pseudo_typo=0.4))
    assert pseudo == QueryAugmenter(typo=0.4)


def test_dataset_augments_the_query_but_not_the_pseudo_query():
    products = [Product(str(i), f"title {i}", None) for i in range(4)]
    pairs = [(QUERY, i) for i in range(4)]
    keywords = [["black", "tshirts", "men"]] * 4

    def dataset(augment):
        return PairDataset(pairs, products, [[0]] * 4, keywords, lambda image: image, seed=3,
                           image_features=lambda row: {}, augment_query=augment)

    plain, augmented = dataset(None), dataset(QueryAugmenter(typo=1.0, reorder=1.0))
    for i in range(4):
        assert plain[i]["query"] == QUERY and augmented[i]["query"] != QUERY
        assert augmented[i]["pseudo_query"] == plain[i]["pseudo_query"]
        assert augmented[i]["query"] == dataset(QueryAugmenter(typo=1.0, reorder=1.0))[i]["query"]
    augmented.set_epoch(1)  # a new epoch draws new variants
    assert [augmented[i]["query"] for i in range(4)] != [
        dataset(QueryAugmenter(typo=1.0, reorder=1.0))[i]["query"] for i in range(4)]


def test_pseudo_queries_get_a_typo_when_asked_and_the_query_stays_as_it_was():
    products = [Product(str(i), f"title {i}", None) for i in range(8)]
    pairs = [(QUERY, i) for i in range(8)]
    keywords = [["black", "tshirts", "casual"]] * 8
    augmenter = QueryAugmenter(typo=1.0)

    def dataset(augment_pseudo):
        return PairDataset(pairs, products, [[0]] * 8, keywords, lambda image: image, seed=3,
                           image_features=lambda row: {}, augment_query=augmenter,
                           augment_pseudo_query=augment_pseudo)

    plain, augmented = dataset(None), dataset(augmenter)
    for i in range(8):
        assert augmented[i]["query"] == plain[i]["query"]
        words, typed = plain[i]["pseudo_query"].split(), augmented[i]["pseudo_query"].split()
        changed = [(a, b) for a, b in zip(words, typed) if a != b]
        assert len(words) == len(typed) and len(changed) == 1  # one typo, as for queries
        assert augmented[i]["pseudo_query"] == dataset(augmenter)[i]["pseudo_query"]
