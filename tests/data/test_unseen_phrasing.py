import random
from collections import Counter
from pathlib import Path

import pytest

from makevl.config import DataConfig
from makevl.data.fashion_mini import SURFACE_FORMS, TEMPLATES, surface_forms, surface_lookup
from makevl.data.shop import fashion_mini_dir, load_shop
from makevl.data.text import add_typo, words
from makevl.data.unseen_phrasing import (
    HELD_OUT_FORMS,
    TEST_ONLY_ORDERS,
    VAL_ONLY_FORMS,
    all_forms,
    held_out_word_sequences,
    known_words,
    seen_forms,
    val_only_word_sequences,
)


@pytest.fixture(scope="module")
def shops():
    if not (fashion_mini_dir() / "styles.csv").is_file():
        pytest.skip(f"fashion-mini data not found at {fashion_mini_dir()} (set MAKEVL_SHARED)")
    return (load_shop(DataConfig(preset="fashion-mini", unseen_phrasing=True)),
            load_shop(DataConfig(preset="fashion-mini")))


def _contains(sequence: list[str], part: tuple[str, ...]) -> bool:
    return any(tuple(sequence[i : i + len(part)]) == part for i in range(len(sequence)))


def _texts(shop, split: str) -> set[str]:
    return {record.query for record in shop.queries_in(split)}


def test_no_held_out_form_in_any_training_or_validation_query(shops):
    unseen, _ = shops
    held_out = held_out_word_sequences()
    trained_on = _texts(unseen, "train") | _texts(unseen, "val")
    assert len(trained_on) > 1000
    leaks = [(text, form) for text in trained_on for form in held_out
             if _contains(words(text), form)]
    assert leaks == []
    # ... while the test queries do use them, and never a training wording.
    test = _texts(unseen, "test")
    with_held_out = [t for t in test if any(_contains(words(t), f) for f in held_out)]
    assert len(with_held_out) >= 0.3 * len(test)
    assert not test & trained_on


def test_validation_has_unseen_forms_of_its_own(shops):
    unseen, seen = shops
    val_only = val_only_word_sequences()
    assert not val_only & held_out_word_sequences()
    for split in ("train", "test"):
        leaks = [(t, f) for t in _texts(unseen, split) for f in val_only if _contains(words(t), f)]
        assert leaks == [], split
    for attribute, values in VAL_ONLY_FORMS.items():  # in no table the other splits draw from
        for value, forms in values.items():
            assert not set(forms) & set(surface_forms(attribute, value)), (attribute, value)
    val = _texts(unseen, "val")
    with_val_form = [t for t in val if any(_contains(words(t), f) for f in val_only)]
    known = known_words(surface_lookup(unseen.products, forms=all_forms))
    misspelt = [t for t in val if not set(words(t)) <= known]
    assert len(with_val_form) >= 0.3 * len(val)
    assert 0.3 * len(val) <= len(misspelt) <= 0.8 * len(val)
    assert len(val - _texts(unseen, "train")) >= 0.9 * len(val)  # worded as training never did
    # Same shapes and judgements as the seen condition's validation.
    judged = Counter(frozenset(qrel) for qrel in unseen.query_set("val").qrels.values())
    assert judged == Counter(frozenset(qrel) for qrel in seen.query_set("val").qrels.values())


def test_test_queries_keep_their_relevant_products(shops):
    unseen, seen = shops
    test, before = unseen.query_set("test"), seen.query_set("test")
    assert test.queries and all(test.qrels[q] for q in test.queries)
    test_ids = {p.id for p in unseen.products_in("test")}
    assert {pid for qrel in test.qrels.values() for pid in qrel} <= test_ids
    # Same query shapes, same judgements: only the wording changed.
    judged = Counter(frozenset(qrel) for qrel in test.qrels.values())
    assert judged == Counter(frozenset(qrel) for qrel in before.qrels.values())
    # Training keeps its pairs too (worded with the kept forms).
    assert len(unseen.queries_in("train")) == len(seen.queries_in("train"))


def test_split_is_deterministic_and_follows_the_seed(shops):
    unseen, _ = shops
    again = load_shop(DataConfig(preset="fashion-mini", unseen_phrasing=True))
    assert [(r.query, r.product_id) for r in again.queries] == [
        (r.query, r.product_id) for r in unseen.queries
    ]
    other = load_shop(DataConfig(preset="fashion-mini", unseen_phrasing=True, split_seed=1))
    assert _texts(other, "test") != _texts(unseen, "test")


def test_test_wordings_mix_the_kinds_of_change(shops):
    unseen, _ = shops
    test = sorted(_texts(unseen, "test"))
    lookup = surface_lookup(unseen.products, forms=all_forms)
    known = known_words(lookup)
    misspelt = [t for t in test if not set(words(t)) <= known]
    assert 0.3 * len(test) <= len(misspelt) <= 0.7 * len(test)  # about half have a typo
    assert any("gents" in words(t) for t in test)  # gender phrased as training never did
    assert any("office" in words(t) for t in test)  # usage too


def test_the_table_split_keeps_every_plain_form_and_holds_out_whole_words():
    for attribute, values in HELD_OUT_FORMS.items():
        for value, held_out in values.items():
            assert set(held_out) < set(surface_forms(attribute, value)), (attribute, value)
            kept = seen_forms(attribute, value)
            assert kept[0] == surface_forms(attribute, value)[0]  # the plain form stays
            assert not set(kept) & set(held_out)
    held = held_out_word_sequences()
    for attribute, values in SURFACE_FORMS.items():
        for value in values:
            for form in seen_forms(attribute, value):
                assert not any(_contains(words(form), h) for h in held), form
    assert len(TEST_ONLY_ORDERS) == len(TEMPLATES)


def test_a_typo_changes_one_long_word_into_an_unknown_one():
    text = "black tshirts for men"
    typos = {add_typo(text, random.Random(seed), {"tshirt", "black"}) for seed in range(40)}
    assert text not in typos and len(typos) > 5
    for typo in typos:
        changed = [(a, b) for a, b in zip(text.split(), typo.split()) if a != b]
        assert len(changed) == 1 and len(typo.split()) == 4
        before, after = changed[0]
        assert before in {"black", "tshirts"} and abs(len(before) - len(after)) <= 1
        assert after not in {"tshirt", "black"} and after[0] == before[0]
    assert add_typo(text, random.Random(0), set()) == add_typo(text, random.Random(0), set())
    assert add_typo("men tee", random.Random(0), set()) == "men tee"  # nothing long to misspell


def test_only_fashion_mini_has_the_condition(small_catalog: Path):
    with pytest.raises(ValueError, match="unseen-phrasing"):
        load_shop(DataConfig(preset="demo", catalog=str(small_catalog), unseen_phrasing=True))
