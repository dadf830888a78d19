import random
from collections import defaultdict
from pathlib import Path

import pytest

from makevl.config import DataConfig
from makevl.data.catalog import CatalogError, Product
from makevl.data.fashion_mini import (
    FASHION_MINI_COLUMNS,
    build_queries,
    build_query_specs,
    explain_query,
    load_fashion_mini,
    normalized_attributes,
    surface_lookup,
)
from makevl.data.shop import SPLITS, fashion_mini_dir, load_shop


@pytest.fixture(scope="module")
def fashion_mini():
    if not (fashion_mini_dir() / "styles.csv").is_file():
        pytest.skip(f"fashion-mini data not found at {fashion_mini_dir()} (set MAKEVL_SHARED)")
    return load_fashion_mini(fashion_mini_dir() / "styles.csv")


def _product(pid: str, **attributes: str) -> Product:
    return Product(pid, f"title {pid}", None, dict(attributes))


def test_reads_every_product(fashion_mini):
    products, records, errors = fashion_mini
    assert len(products) == 3107
    assert len({p.id for p in products}) == 3107
    assert errors == []
    assert all(p.title.strip() for p in products)
    first = products[0]
    assert set(first.attributes) <= set(FASHION_MINI_COLUMNS.attributes)
    assert Path(first.image).parent == (fashion_mini_dir() / "images").resolve()
    assert records and all(r.label == 1.0 for r in records)


def test_relevance_is_exactly_every_named_attribute(fashion_mini):
    products, records, _ = fashion_mini
    relevant_of = defaultdict(set)
    for record in records:
        relevant_of[record.query].add(record.product_id)
    specs = build_query_specs(products)
    assert {s.text for s in specs} == set(relevant_of)
    lookup = surface_lookup(products)
    attrs = {p.id: normalized_attributes(p) for p in products}
    for spec in random.Random(0).sample(specs, 150):
        expected = {
            pid
            for pid, a in attrs.items()
            if all(a.get(k) == v for k, v in spec.attributes.items())
        }
        assert relevant_of[spec.text] == expected, spec
        assert len(expected) >= 2
        assert explain_query(spec.text, lookup) == spec.attributes  # the table explains it


def test_product_split_is_disjoint_and_test_queries_see_test_products_only(fashion_mini):
    shop = load_shop(DataConfig(preset="fashion-mini"))
    by_split = {s: {p.id for p in shop.products_in(s)} for s in SPLITS}
    assert sum(len(ids) for ids in by_split.values()) == 3107
    assert set().union(*by_split.values()) == {p.id for p in shop.products}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["val"] & by_split["test"])

    test = shop.query_set("test")
    assert {p.id for p in test.pool} == by_split["test"]
    judged = {pid for qrel in test.qrels.values() for pid in qrel}
    assert judged <= by_split["test"]
    assert all(test.qrels[qid] for qid in test.queries)
    # Enough test queries have something to find (the preset's purpose).
    assert len(test.queries) >= 0.5 * len({r.query for r in shop.queries})


def test_queries_are_deterministic_short_and_varied(fashion_mini):
    products, records, _ = fashion_mini
    again = build_queries(products, seed=0)
    assert [(r.query, r.product_id) for r in again] == [(r.query, r.product_id) for r in records]
    other = {r.query for r in build_queries(products, seed=1)}
    assert other != {r.query for r in records}  # the seed picks the wording

    texts = {r.query for r in records}
    lengths = [len(t.split()) for t in texts]
    assert sum(2 <= n <= 4 for n in lengths) >= 0.85 * len(lengths)
    assert max(lengths) <= 6
    tokens = {w for t in texts for w in t.split()}
    for variants in (
        {"tshirts", "t-shirts", "tshirt", "t-shirt", "tees", "tee"},
        {"grey", "gray"},
        {"men", "mens", "men's"},
        {"women", "womens", "women's", "ladies"},
    ):
        assert len(tokens & variants) >= 2, variants
    assert any("sneakers" in t or "running shoes" in t for t in texts)
    assert len(texts) <= 1500


def test_empty_attribute_is_never_relevant_and_rare_combos_are_dropped():
    products = [
        _product("a", gender="Men", articleType="Tshirts", baseColour="Grey", usage="Casual"),
        _product("b", gender="Men", articleType="Tshirts", baseColour="Grey", usage="Casual"),
        _product("c", gender="Men", articleType="Tshirts", usage="Casual"),  # no colour
        _product("d", gender="Women", articleType="Tops", baseColour="Red", usage="Casual"),
    ]
    specs = {tuple(sorted(s.attributes.items())): s.relevant for s in build_query_specs(products)}
    assert specs[(("articleType", "tshirts"), ("gender", "men"))] == ["a", "b", "c"]
    assert specs[(("articleType", "tshirts"), ("baseColour", "grey"))] == ["a", "b"]
    assert not any(("articleType", "tops") in key for key in specs)  # one product only


def test_usage_is_not_repeated_in_article_type_and_cap_is_respected():
    products = [
        _product(
            str(i),
            gender=g,
            articleType="Casual Shoes",
            subCategory="Shoes",
            usage="Casual",
            baseColour=c,
        )
        for i, (g, c) in enumerate(
            [(g, c) for g in ("Men", "Women") for c in ("Black", "White")] * 2
        )
    ]
    specs = build_query_specs(products)
    assert specs and all("casual casual" not in s.text for s in specs)
    assert not any("usage" in s.attributes and "subCategory" in s.attributes for s in specs)
    capped = build_query_specs(products, max_queries=3)
    assert len(capped) == 3 and capped == build_query_specs(products, max_queries=3)


def test_missing_catalog_is_a_clear_error(tmp_path):
    with pytest.raises(CatalogError, match="styles.csv"):
        load_fashion_mini(tmp_path / "styles.csv")
