"""The fashion-mini preset: 3,107 real Myntra products and queries built from their attributes.

The catalog has no query log, so queries are written the way shoppers type
them ("mens black tshirts", "sneakers for women") from attribute combinations,
and a product is relevant to a query iff it matches every attribute the query
names. Every spelling variant, plural and synonym lives in one table,
:data:`SURFACE_FORMS`, so :func:`explain_query` can map any generated query
back to the attributes that judge it.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from makevl.config import ColumnMapping
from makevl.data.catalog import Product, QueryRecord, RowError, iter_catalog
from makevl.data.text import normalize_text, words

ATTRIBUTE_COLUMNS = [
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
]
FASHION_MINI_COLUMNS = ColumnMapping(
    id="id", title="productDisplayName", image="image", keywords=None, attributes=ATTRIBUTE_COLUMNS
)

# How shoppers write each canonical (normalized) attribute value. The first form
# is the plain one; values not listed are written as their normalized name.
# subCategory lists only the few sub-categories shoppers name ("women shoes").
SURFACE_FORMS: dict[str, dict[str, list[str]]] = {
    "gender": {
        "men": ["men", "mens", "men's"],
        "women": ["women", "womens", "women's", "ladies"],
        "boys": ["boys", "boy's"],
        "girls": ["girls", "girl's"],
    },
    "baseColour": {
        "grey": ["grey", "gray"],
        "navy blue": ["navy blue", "navy"],
        "off white": ["off white", "off-white"],
        "multi": ["multicolour", "multicolor", "multi colour"],
        "charcoal": ["charcoal", "charcoal grey"],
    },
    "usage": {
        "sports": ["sports", "sport"],
        "ethnic": ["ethnic", "traditional"],
    },
    "articleType": {
        "tshirts": ["tshirts", "t-shirts", "tshirt", "t-shirt", "tees", "tee"],
        "shirts": ["shirts", "shirt"],
        "casual shoes": ["casual shoes"],
        "sports shoes": ["sports shoes", "sneakers", "running shoes", "sport shoes"],
        "formal shoes": ["formal shoes"],
        "watches": ["watches", "watch", "wrist watch"],
        "kurtas": ["kurtas", "kurta"],
        "tops": ["tops", "top"],
        "handbags": ["handbags", "handbag", "hand bags"],
        "sunglasses": ["sunglasses", "sun glasses", "shades"],
        "heels": ["heels", "high heels"],
        "flip flops": ["flip flops", "flip-flops", "slippers"],
        "belts": ["belts", "belt"],
        "wallets": ["wallets", "wallet"],
        "sweatshirts": ["sweatshirts", "sweatshirt"],
        "trousers": ["trousers", "trouser", "pants"],
        "sandals": ["sandals", "sandal"],
        "sweaters": ["sweaters", "sweater", "pullover"],
        "briefs": ["briefs", "brief"],
        "backpacks": ["backpacks", "backpack", "rucksack"],
        "jeans": ["jeans", "denims"],
        "jackets": ["jackets", "jacket"],
        "caps": ["caps", "cap"],
        "track pants": ["track pants", "trackpants", "joggers"],
        "innerwear vests": ["innerwear vests", "vests", "vest"],
        "ties": ["ties", "tie"],
        "perfume and body mist": ["perfume", "perfumes", "body mist"],
        "dresses": ["dresses", "dress"],
        "kurtis": ["kurtis", "kurti"],
        "clutches": ["clutches", "clutch"],
        "sarees": ["sarees", "saree", "sari"],
        "skirts": ["skirts", "skirt"],
        "duffel bag": ["duffel bags", "duffel bag", "duffle bag"],
        "laptop bag": ["laptop bags", "laptop bag"],
        "bra": ["bras", "bra"],
        "mufflers": ["mufflers", "muffler"],
        "tunics": ["tunics", "tunic"],
        "earrings": ["earrings", "earring"],
        "deodorant": ["deodorant", "deo"],
    },
    "subCategory": {
        "shoes": ["shoes", "footwear"],
        "bags": ["bags"],
        "jewellery": ["jewellery", "jewelry"],
    },
}

# Query shapes: the attribute slots a query names and the word orders used to
# write it. "type" is the articleType or one of the named subCategories.
# Article type alone is too broad to be a useful query and is left out.
TEMPLATES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("gender", "type"), ("{gender} {type}", "{type} for {gender}")),
    (("colour", "type"), ("{colour} {type}",)),
    (("gender", "colour", "type"), ("{gender} {colour} {type}", "{colour} {type} for {gender}")),
    (("usage", "type"), ("{usage} {type}",)),
    (("gender", "usage", "type"), ("{gender} {usage} {type}", "{usage} {type} for {gender}")),
    # Four attributes: no "for", to stay near four words.
    (("gender", "colour", "usage", "type"), ("{gender} {colour} {usage} {type}",)),
]
SLOT_ATTRIBUTE = {"gender": "gender", "colour": "baseColour", "usage": "usage"}


@dataclass
class FashionQuery:
    """A generated query, the attributes that judge it, and the products that match them."""

    text: str
    attributes: dict[str, str]  # attribute column -> normalized value
    relevant: list[str]  # product ids matching every named attribute
    template: int  # index into TEMPLATES
    named: tuple[tuple[str, str], ...]  # (attribute, value) per slot of the template


FormsOf = Callable[[str, str], list[str]]  # (attribute, normalized value) -> surface forms


def surface_forms(attribute: str, value: str) -> list[str]:
    return SURFACE_FORMS.get(attribute, {}).get(value, [value])


def normalized_attributes(product: Product) -> dict[str, str]:
    return {
        name: normalize_text(value) for name, value in product.attributes.items() if value.strip()
    }


def surface_lookup(
    products: list[Product], forms: FormsOf = surface_forms
) -> dict[tuple[str, ...], tuple[str, str] | None]:
    """Word sequence -> (attribute, value) for every way (``forms``) a query can name a catalog value.

    A word sequence that could mean two different things maps to None, so a
    query using it cannot be explained and is never generated.
    """
    lookup: dict[tuple[str, ...], tuple[str, str] | None] = {}
    named = ("gender", "baseColour", "usage", "articleType")
    for product in products:
        attrs = normalized_attributes(product)
        pairs = [(name, attrs[name]) for name in named if name in attrs]
        if attrs.get("subCategory") in SURFACE_FORMS["subCategory"]:
            pairs.append(("subCategory", attrs["subCategory"]))
        for name, value in pairs:
            for form in forms(name, value):
                key = tuple(words(form))
                if key in lookup and lookup[key] != (name, value):
                    lookup[key] = None
                elif key not in lookup:
                    lookup[key] = (name, value)
    return lookup


def explain_query(
    text: str, lookup: dict[tuple[str, ...], tuple[str, str] | None]
) -> dict[str, str]:
    """The attributes a query names (longest word match first; "for" and unknown words ignored)."""
    tokens = words(text)
    longest = max((len(k) for k in lookup), default=0)
    found: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        for size in range(min(longest, len(tokens) - i), 0, -1):
            meaning = lookup.get(tuple(tokens[i : i + size]))
            if meaning is not None:
                found[meaning[0]] = meaning[1]
                i += size
                break
        else:
            i += 1
    return found


def _combos(attrs: dict[str, str]) -> list[tuple[int, tuple[tuple[str, str], ...]]]:
    """Every (template index, named attributes) a product with these attributes answers."""
    types = [("articleType", attrs["articleType"])] if "articleType" in attrs else []
    if attrs.get("subCategory") in SURFACE_FORMS["subCategory"]:
        types.append(("subCategory", attrs["subCategory"]))
    out = []
    for index, (slots, _) in enumerate(TEMPLATES):
        named = [SLOT_ATTRIBUTE[s] for s in slots if s != "type"]
        if any(name not in attrs for name in named):
            continue
        for type_attr, type_value in types:
            # "casual casual shoes" is not a query, and "casual shoes" already names
            # an article type, so usage pairs with article types only.
            if "usage" in named and (
                type_attr != "articleType" or attrs["usage"] in words(type_value)
            ):
                continue
            out.append((index, tuple((n, attrs[n]) for n in named) + ((type_attr, type_value),)))
    return out


def write_query(
    index: int,
    named: tuple[tuple[str, str], ...],
    rng: random.Random,
    forms: FormsOf = surface_forms,
    patterns: tuple[str, ...] | None = None,
) -> str:
    """One wording of a query shape: a pattern (default: the template's) and a form per slot."""
    slots, template_patterns = TEMPLATES[index]
    patterns = patterns or template_patterns
    pattern = rng.choice(patterns)
    if dict(named).get("gender") == "unisex":
        pattern = patterns[0]  # "unisex caps", not "caps for unisex"
    filled = {}
    for slot, (attribute, value) in zip(slots, named):
        choices = forms(attribute, value)
        if slot == "gender" and "for {gender}" in pattern:
            choices = [f for f in choices if "'" not in f] or choices  # not "for men's"
        filled[slot] = rng.choice(choices)
    return " ".join(pattern.format(**filled).split())


def build_query_specs(
    products: list[Product], seed: int = 0, max_queries: int = 1500, min_relevant: int = 2
) -> list[FashionQuery]:
    """Distinct attribute queries with at least ``min_relevant`` matching products.

    Variants are drawn from a generator seeded by ``seed`` and the attribute
    combination, so a query's wording does not change when other products are
    added. Above ``max_queries`` the query shapes take turns, each in a seeded
    order, so short and long queries stay mixed.
    """
    groups: dict[tuple[int, tuple[tuple[str, str], ...]], list[str]] = defaultdict(list)
    for product in products:
        for key in _combos(normalized_attributes(product)):
            groups[key].append(product.id)

    lookup = surface_lookup(products)
    by_template: dict[int, list[FashionQuery]] = defaultdict(list)
    for (index, named), ids in sorted(groups.items()):
        if len(set(ids)) < min_relevant:
            continue
        text = write_query(index, named, random.Random(f"{seed}|{index}|{named}"))
        if explain_query(text, lookup) != dict(named):
            continue  # ambiguous wording; a wrong judgement is worse than one query fewer
        by_template[index].append(
            FashionQuery(text, dict(named), sorted(set(ids)), index, named)
        )

    for index, queries in by_template.items():
        random.Random(f"{seed}|order|{index}").shuffle(queries)
    chosen: list[FashionQuery] = []
    seen: set[str] = set()
    while len(chosen) < max_queries and any(by_template.values()):
        for index in sorted(by_template):
            if by_template[index] and len(chosen) < max_queries:
                query = by_template[index].pop(0)
                if query.text not in seen:
                    seen.add(query.text)
                    chosen.append(query)
    return sorted(chosen, key=lambda q: q.text)


def build_queries(
    products: list[Product], seed: int = 0, max_queries: int = 1500, min_relevant: int = 2
) -> list[QueryRecord]:
    """Query-log rows (label 1) for every (generated query, relevant product) pair."""
    records = []
    for line, query in enumerate(build_query_specs(products, seed, max_queries, min_relevant), 1):
        records += [
            QueryRecord(query.text, pid, 1.0, "fashion-mini:generated", line)
            for pid in query.relevant
        ]
    return records


def load_fashion_mini(
    catalog: str | Path, seed: int = 0
) -> tuple[list[Product], list[QueryRecord], list[RowError]]:
    """Read ``styles.csv`` and build its attribute queries; rows that fail come back as errors."""
    products: list[Product] = []
    errors: list[RowError] = []
    for item in iter_catalog(catalog, FASHION_MINI_COLUMNS):
        (errors if isinstance(item, RowError) else products).append(item)
    return products, build_queries(products, seed=seed), errors
