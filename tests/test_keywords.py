import json

import pytest

from makevl.data.catalog import Product, QueryRecord
from makevl.keywords import KeywordVocab, build_vocabulary


def _p(
    pid: str, title: str, category: str, colour: str, gender: str, keywords=(), **extra
) -> Product:
    attributes = {"category": category, "colour": colour, "gender": gender, **extra}
    return Product(pid, title, None, attributes, list(keywords))


# "new" and "classic" are in every title; waterproof/trailmax/cotton/leather/silk in two each.
PRODUCTS = [
    _p("p1", "New Classic Trailmax Waterproof Jacket", "Jackets", "Navy Blue", "Men"),
    _p("p2", "New Classic Waterproof Hiking Boots", "Boots", "Brown", "Men", ["Hiking"]),
    _p("p3", "New Classic Trailmax Cotton Summer Dress", "Dresses", "Red", "Women"),
    _p("p4", "New Classic Cotton Tshirt 2024", "Tshirts", "White", "Men"),
    _p("p5", "NEW Classic Leather Running Shoes", "Shoes", "Black", "Women"),
    _p("p6", "New Classic Leather Belt - Free Shipping", "Belts", "Black", "Men", year="2024"),
    _p("p7", "New Classic Silk Scarf", "Scarves", "Red", "Women"),
    _p("p8", "New Classic Silk Saree x", "Sarees", "Red", "Women"),
]


@pytest.fixture
def vocab() -> KeywordVocab:
    return build_vocabulary(PRODUCTS, extra_keywords=["Running Shoes"])


def test_vocabulary_sources(vocab):
    attributes = {k for k, s in vocab.sources.items() if s == "attribute"}
    assert attributes == {
        "jackets",
        "boots",
        "dresses",
        "tshirts",
        "shoes",
        "belts",
        "scarves",
        "sarees",
        "navy blue",
        "brown",
        "red",
        "white",
        "black",
        "men",
        "women",
    }  # the year 2024 is a number, not a keyword
    assert {k for k, s in vocab.sources.items() if s == "user"} == {"running shoes", "hiking"}
    assert {k for k, s in vocab.sources.items() if s == "title"} == {
        "cotton",
        "leather",
        "silk",
        "trailmax",
        "waterproof",
    }
    for word in ("new", "classic", "free", "shipping", "2024", "x", "jacket"):
        assert word not in vocab.index  # filler, in every title, number, 1 letter, or rare
    assert len(vocab) == len(vocab.keywords) == len(vocab.index) == len(vocab.sources)
    assert all(vocab.keywords[i] == k for k, i in vocab.index.items())


def test_product_keywords_are_exact(vocab):
    assert vocab.keywords_of("p1") == ["jackets", "navy blue", "men", "trailmax", "waterproof"]
    assert vocab.keywords_of("p2") == ["boots", "brown", "men", "waterproof", "hiking"]
    assert vocab.keywords_of("p5") == ["shoes", "black", "women", "leather", "running shoes"]
    assert vocab.keywords_of("p6") == ["belts", "black", "men", "leather"]
    assert vocab.ids_of("p6") == [vocab.index[k] for k in ["belts", "black", "men", "leather"]]
    with pytest.raises(KeyError, match="p99"):
        vocab.keywords_of("p99")


def test_keywords_in_text_whole_words_and_multi_word(vocab):
    assert vocab.keywords_in_text("Running Shoes for WOMEN") == ["running shoes", "women"]
    assert vocab.keywords_in_text("navy-blue waterproofs jacket") == ["navy blue"]
    assert vocab.keywords_in_text("womens shoes") == ["shoes"]  # "women" is not inside "womens"
    shirts = build_vocabulary(PRODUCTS, extra_keywords=["shirt"])
    assert shirts.keywords_in_text("cotton t-shirt") == ["cotton"]  # "shirt" is not a T-shirt


def test_attribute_names_and_title_budget_choose_what_is_mined():
    only_colour = build_vocabulary(PRODUCTS, attribute_names=["colour"], max_title_terms=2)
    assert {k for k, s in only_colour.sources.items() if s == "attribute"} == {
        "navy blue",
        "brown",
        "red",
        "white",
        "black",
    }
    # Equal tf-idf: ties are broken alphabetically, so the budget keeps the same two every time.
    assert [k for k in only_colour.keywords if only_colour.sources[k] == "title"] == [
        "cotton",
        "leather",
    ]


def test_query_log_promotes_terms_that_go_with_query_words():
    queries = [
        QueryRecord("rain jacket", "p1"),
        QueryRecord("rain boots", "p2"),
        QueryRecord("red dress", "p3"),
        QueryRecord("white tshirt", "p4"),
        QueryRecord("black shoes", "p5"),
        QueryRecord("leather belt", "p6"),
    ]
    without = build_vocabulary(PRODUCTS, max_title_terms=1)
    with_log = build_vocabulary(PRODUCTS, queries=queries, max_title_terms=1)
    assert [k for k in without.keywords if without.sources[k] == "title"] == ["cotton"]
    assert [k for k in with_log.keywords if with_log.sources[k] == "title"] == [
        "waterproof"
    ]  # co-occurs with "rain" in two query pairs


def test_save_load_round_trip(vocab, tmp_path):
    path = tmp_path / "keywords.json"
    vocab.save(path)
    loaded = KeywordVocab.load(path)
    assert loaded == vocab
    assert loaded.keywords == vocab.keywords and loaded.index == vocab.index
    assert loaded.keywords_in_text("running shoes") == ["running shoes"]

    data = json.loads(path.read_text())
    data["product_keywords"]["p1"].append("unheard-of")
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="keywords.json.*p1"):
        KeywordVocab.load(path)


def test_deterministic_and_rejects_duplicate_ids():
    assert build_vocabulary(PRODUCTS) == build_vocabulary(list(PRODUCTS))
    with pytest.raises(ValueError, match="duplicate product ids.*p1"):
        build_vocabulary(PRODUCTS + [PRODUCTS[0]])
