"""Query spelling correction: which words it rewrites, to what, and its file."""

from __future__ import annotations

import json
import random

import pytest

from makevl.data.catalog import Product, QueryRecord
from makevl.data.text import add_typo
from makevl.spelling import SpellingCorrector, build_spelling

PRODUCTS = [
    Product("p1", "Roadster Men Black Cotton Tshirts", None, {"colour": "Black"}, ["casual"]),
    Product("p2", "Puma Women Running Sneakers", None, {"colour": "Navy Blue"}),
    Product("p3", "Fossil Black Leather Watches", None, {"colour": "Black"}),
]
QUERIES = [QueryRecord("black tshirts for men", "p1"), QueryRecord("sports shoes", "p2")]


@pytest.fixture
def corrector() -> SpellingCorrector:
    return build_spelling(PRODUCTS, QUERIES)


def test_words_come_from_titles_attributes_keywords_and_queries(corrector):
    assert corrector.counts["black"] == 5  # two titles, two colour values, one query
    assert {"navy", "casual", "sports", "roadster"} <= set(corrector.counts)
    assert "p1" not in corrector.counts  # ids are not words a shopper types


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("blak", "black"),  # a letter dropped
        ("blacck", "black"),  # doubled
        ("balck", "black"),  # two swapped
        ("bleck", "black"),  # one changed
        ("tshrits", "tshirts"),
        ("Blak", "black"),  # case does not matter
        ("nvy", "navy"),  # three letters are enough
    ],
)
def test_a_word_one_edit_from_a_shop_word_becomes_that_word(corrector, typed, meant):
    assert corrector.correct_word(typed) == meant


def test_the_more_frequent_of_two_equally_close_words_wins():
    corrector = SpellingCorrector({"shirt": 9, "skirt": 2})
    assert corrector.correct_word("shhirt") == "shirt"
    assert corrector.correct_word("sirt") == "shirt"  # "shirt" and "skirt" are both one edit away


@pytest.mark.parametrize(
    "word",
    [
        "black",  # a shop word
        "bk",  # too short to guess
        "blk",  # two edits away
        "bllakk",  # two edits away
        "1080p",  # not only letters
        "gray",  # one edit from "grey", but an English word
        "tees",  # one edit from "ties", but an English word
        "kurtaa",  # not English, but a word the query tower knows whole (``known``)
        "zzzzzz",  # nothing close
    ],
)
def test_known_short_distant_and_real_words_are_left_alone(word):
    corrector = SpellingCorrector({"black": 3, "grey": 2, "ties": 2, "kurta": 1, "bk": 1},
                                  known={"kurtaa"})
    assert corrector.correct_word(word) == word


# A shop of 100 words. English shares: "wite" 1.6e-7, "tees" 6.9e-6, "hat" 4.5e-5.
SHOP = {"white": 40, "ties": 3, "cat": 1, "kurta": 6, "black": 50}


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("wite", "white"),  # shop share 0.4: 2.5 million times its English share
        ("tees", "ties"),  # 0.03: 4,400 times
        ("kurtaa", "kurta"),  # a tokenizer word the dictionary lacks counts once
        ("hat", "hat"),  # "cat" 0.01: only 220 times "hat"'s share of English
        ("gray", "gray"),  # nothing in this shop one edit away
    ],
)
def test_a_real_word_becomes_the_shop_word_the_shop_makes_far_likelier(typed, meant):
    corrector = SpellingCorrector(SHOP, known={"kurtaa"}, real_word_ratio=1000)
    assert corrector.correct_word(typed) == meant
    if typed != meant:
        assert SpellingCorrector(SHOP, known={"kurtaa"}).correct_word(typed) == typed  # ratio 0
        assert SpellingCorrector(SHOP, known={"kurtaa"}, real_word_ratio=1e11).correct_word(
            typed) == typed  # a ratio the shop does not reach


def test_a_negative_real_word_ratio_is_refused():
    with pytest.raises(ValueError, match="real_word_ratio"):
        SpellingCorrector(SHOP, real_word_ratio=-1)


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("everryday", "everyday"),  # a word no product or query has
        ("ladiees", "ladies"),
        ("hwen", "when"),  # of several English words ("hen", "hewn"), the most frequent
        ("blakc", "black"),  # a shop word one edit away still comes first
        ("tshrits", "tshirts"),
        ("zzzzzz", "zzzzzz"),  # nothing close either way
        ("gray", "gray"),  # a real word is still not a typo
    ],
)
def test_english_fallback_corrects_typos_of_words_the_shop_lacks(corrector, typed, meant):
    fallback = SpellingCorrector(corrector.counts, english_fallback=True)
    assert fallback.correct_word(typed) == meant
    if typed in {"everryday", "ladiees"}:
        assert corrector.correct_word(typed) == typed  # off by default


def test_only_the_misspelt_word_changes_in_a_query(corrector):
    assert corrector.correct("Blak T-shirt, size 42!") == "black T-shirt, size 42!"
    assert corrector.correct_all(["sports shoes", "runing sneakers"]) == [
        "sports shoes", "running sneakers",
    ]  # fmt: skip


def test_the_typos_training_augments_with_are_undone(corrector):
    rng = random.Random(0)
    # words of 5+ letters: a typo leaves at least min_letters (3) to correct
    queries = ["black tshirts", "cotton sneakers", "black leather watches", "running sneakers"]
    fixed = 0
    for query in queries * 5:
        typo = add_typo(query, rng, set(corrector.counts))
        assert typo != query
        fixed += corrector.correct(typo) == query
    assert fixed == 20


def test_round_trip_through_its_json_file(corrector, tmp_path):
    corrector.save(tmp_path / "spelling.json")
    loaded = SpellingCorrector.load(tmp_path / "spelling.json", known={"gray"})
    assert loaded.counts == corrector.counts and loaded.min_letters == corrector.min_letters
    assert loaded.correct("balck tshrits") == "black tshirts"
    assert loaded.known == {"gray"} and not loaded.english_fallback
    assert not loaded.real_word_ratio
    with_fallback = SpellingCorrector.load(
        tmp_path / "spelling.json", english_fallback=True, real_word_ratio=1000
    )
    assert with_fallback.correct("everryday tshrits") == "everyday tshirts"
    assert with_fallback.real_word_ratio == 1000


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        json.dumps({"format": "other/1", "min_letters": 4, "words": {}}),
        json.dumps({"format": "makevl-spelling/1", "words": {"black": 2}}),
        json.dumps({"format": "makevl-spelling/1", "min_letters": 4, "words": {"black": -1}}),
        json.dumps({"format": "makevl-spelling/1", "min_letters": 4, "words": ["black"]}),
        json.dumps({"format": "makevl-spelling/1", "min_letters": 1, "words": {"black": 1}}),
    ],
)
def test_a_bad_file_is_a_clear_error_naming_it(tmp_path, content):
    path = tmp_path / "spelling.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="spelling.json: not a spelling file"):
        SpellingCorrector.load(path)
