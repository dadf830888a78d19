import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from makevl.data.catalog import RowError, iter_catalog, iter_queries
from makevl.data.demo import (
    APPAREL,
    CHOICES,
    ELECTRONICS,
    PATTERNS,
    make_demo_shop,
    make_title,
    render_product_image,
    sample_attributes,
)
from makevl.data.images import load_image
from makevl.data.text import COLOUR_WORDS

N = 60


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    stats = make_demo_shop(out, n_products=N, seed=0, image_size=48)
    products = list(iter_catalog(out / "catalog.csv"))
    queries = list(iter_queries(out / "queries.csv"))
    return out, stats, products, queries


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _centre_std(image) -> float:
    """Pixel spread in the middle of the picture, which lies inside every silhouette."""
    array = np.asarray(image, dtype=np.float32)
    h, w = array.shape[:2]
    crop = array[int(h * 0.42) : int(h * 0.58), int(w * 0.42) : int(w * 0.58)]
    return float(crop.std(axis=(0, 1)).mean())


def test_same_seed_same_bytes_even_with_other_hash_seed(shop, tmp_path):
    out, _, _, _ = shop
    script = (
        "import sys; from makevl.data.demo import make_demo_shop; "
        f"make_demo_shop(sys.argv[1], n_products={N}, seed=0, image_size=48)"
    )
    env = {"PYTHONHASHSEED": "12345", "PATH": ""}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, env=env)
    first, second = _files(out), _files(tmp_path)
    assert len(first) == N + 2
    assert first == second


def test_other_seed_gives_other_shop(shop, tmp_path):
    out, _, _, _ = shop
    make_demo_shop(tmp_path, n_products=N, seed=1, image_size=48)
    for name in ("catalog.csv", "queries.csv", "images/000000.png"):
        assert (out / name).read_bytes() != (tmp_path / name).read_bytes(), name


def test_catalog_and_queries_read_back_cleanly(shop):
    out, stats, products, queries = shop
    assert not [p for p in products if isinstance(p, RowError)]
    assert not [q for q in queries if isinstance(q, RowError)]
    assert stats["products"] == len(products) == N
    assert stats["pairs"] == len(queries)
    assert stats["queries"] == len({q.query for q in queries})
    assert stats["categories"] == 8
    assert Path(stats["paths"]["catalog"]) == out / "catalog.csv"
    for product in products:
        assert product.image == str((out / "images" / f"{product.id}.png").resolve())
        assert load_image(product.image).size == (48, 48)
        assert 10 <= len(product.title.split()) <= 25, product.title
        assert set(product.keywords) == set(product.attributes.values())
    ids = {p.id for p in products}
    assert all(q.product_id in ids and q.label == 1.0 for q in queries)


def test_every_query_labels_exactly_the_matching_products(shop):
    _, _, products, queries = shop
    # A value word belongs to one attribute only, so a query's words are its constraints.
    owner: dict[str, str] = {category: "category" for category in CHOICES}
    for choices in CHOICES.values():
        for attribute, values in choices.items():
            for value in values:
                assert owner.setdefault(value, attribute) == attribute, value
    relevant: dict[str, set[str]] = defaultdict(set)
    for record in queries:
        relevant[record.query].add(record.product_id)
    for text, ids in relevant.items():
        words = text.split()
        assert 2 <= len(words) <= 4, text
        wanted = {owner[word]: word for word in words}
        assert len(wanted) == len(words) and "category" in wanted, text
        matching = {
            p.id for p in products if all(p.attributes.get(a) == v for a, v in wanted.items())
        }
        assert ids == matching, text
    single = [t for t in relevant if len(t.split()) == 2 and t.split()[-1] in CHOICES]
    assert single, "expected some one-attribute-plus-category queries"


def test_apparel_titles_hide_the_pattern_electronics_titles_carry_the_spec():
    rng = random.Random(0)
    colour_shown = 0
    apparel = 0
    for i in range(400):
        category = (APPAREL + ELECTRONICS)[i % 6]
        attributes = sample_attributes(category, rng)
        title = make_title(attributes, rng).lower()
        words = set(title.split())
        if category in APPAREL:
            apparel += 1
            assert not words & set(PATTERNS + ("stripe", "stripes", "check", "dots", "plaid"))
            assert not words & (set(COLOUR_WORDS) - {attributes["colour"]}), title
            colour_shown += attributes["colour"] in words
        else:
            assert {attributes["brand"], attributes["spec"], category} <= words, title
    assert 0.3 < colour_shown / apparel < 0.7


def test_apparel_queries_ask_for_the_pattern(shop):
    _, _, _, queries = shop
    pattern_queries = {q.query for q in queries if set(q.query.split()) & set(PATTERNS)}
    spec_queries = {q.query for q in queries if any(w[0].isdigit() for w in q.query.split())}
    assert pattern_queries and spec_queries


def test_pattern_is_visible_in_the_picture():
    for seed in range(5):
        plain = render_product_image("t-shirt", "red", "plain", random.Random(seed), 96)
        for pattern in ("striped", "checked", "dotted"):
            patterned = render_product_image("t-shirt", "red", pattern, random.Random(seed), 96)
            assert _centre_std(patterned) > _centre_std(plain) + 20, (seed, pattern)


def test_shop_images_follow_their_pattern_attribute(shop):
    _, _, products, _ = shop
    spread = defaultdict(list)
    for product in products:
        if product.attributes["category"] == "t-shirt":
            spread[product.attributes["pattern"] == "plain"].append(
                _centre_std(load_image(product.image))
            )
    assert spread[True] and spread[False]
    assert min(spread[False]) > max(spread[True])


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_products"):
        make_demo_shop(tmp_path, n_products=0)
    with pytest.raises(ValueError, match="image_size"):
        make_demo_shop(tmp_path, n_products=5, image_size=4)
    with pytest.raises(ValueError, match="unknown demo category"):
        render_product_image("sofa", "red", "plain", random.Random(0))
