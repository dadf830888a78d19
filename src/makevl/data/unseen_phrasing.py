"""fashion-mini's "unseen phrasing" condition: test queries worded the way training never saw.

Shoppers use synonyms, other spellings, other word orders and typos. To measure
that honestly, the surface-form table is split once, by hand and in code:

- :data:`HELD_OUT_FORMS`: synonyms and spellings from :data:`SURFACE_FORMS` that
  only test queries use ("tees", "gray", "sneakers", "ladies"). The plain form
  of a value is never held out, so every value can still be asked for in
  training. A held-out form is a different word sequence from every form kept
  for training, not a plural or hyphenation of one ("tee" and "tees" go together).
- :data:`TEST_ONLY_FORMS`: gender and usage phrased in ways the table never
  names ("gents", "office", "gym", "everyday").
- :data:`TEST_ONLY_ORDERS`: word orders no training template uses ("tshirts black").
- A typo in one word of about half the test queries.

Validation is made the same way with words of its own, so that what is chosen
on it (the checkpoint, MA's gate temperature, a setting) is chosen for
wordings the model never trained on without looking at the test's:
:data:`VAL_ONLY_FORMS` ("male", "trainers", "purse", "daily") are in no
training or test query, and about half the validation queries get a typo.

Each query shape keeps its attributes and so its relevance judgements: a test
product is judged by the same attributes whatever the wording. Training
products get a wording drawn from the kept forms only; validation products one
with every validation-only form that fits or a typo; test products one with
every held-out or test-only form that fits, plus a new word order or a typo
(at least one of the changes). Everything is seeded by the split seed and the
query's attributes.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from makevl.data.catalog import Product, QueryRecord
from makevl.data.fashion_mini import (
    FashionQuery,
    build_query_specs,
    explain_query,
    surface_forms,
    surface_lookup,
    write_query,
)
from makevl.data.text import add_typo, words

HELD_OUT_FORMS: dict[str, dict[str, list[str]]] = {
    "gender": {"women": ["ladies"]},
    "baseColour": {"grey": ["gray"], "multi": ["multicolor"], "charcoal": ["charcoal grey"]},
    "usage": {"sports": ["sport"], "ethnic": ["traditional"]},
    "articleType": {
        "tshirts": ["tees", "tee"],
        "watches": ["wrist watch"],
        "handbags": ["hand bags"],
        "sunglasses": ["shades"],
        "heels": ["high heels"],
        "flip flops": ["slippers"],
        "sports shoes": ["sneakers", "sport shoes"],
        "sweaters": ["pullover"],
        "backpacks": ["rucksack"],
        "jeans": ["denims"],
        "track pants": ["joggers"],
        "perfume and body mist": ["body mist"],
        "sarees": ["sari"],
        "deodorant": ["deo"],
        "duffel bag": ["duffle bag"],
    },
    "subCategory": {"shoes": ["footwear"], "jewellery": ["jewelry"]},
}
TEST_ONLY_FORMS: dict[str, dict[str, list[str]]] = {
    "gender": {"men": ["gents"]},
    "usage": {"formal": ["office"], "sports": ["gym"], "casual": ["everyday"]},
}
# Synonyms that only validation queries use: in neither table above.
VAL_ONLY_FORMS: dict[str, dict[str, list[str]]] = {
    "gender": {"men": ["male"], "women": ["female"]},
    "usage": {"casual": ["daily"], "formal": ["work"], "sports": ["athletic"]},
    "articleType": {
        "sports shoes": ["trainers"],
        "trousers": ["slacks"],
        "sunglasses": ["eyewear"],
        "sweaters": ["jumper"],
        "caps": ["hat"],
        "handbags": ["purse"],
        "heels": ["stilettos"],
        "watches": ["timepiece"],
        "track pants": ["sweatpants"],
        "ties": ["necktie"],
        "mufflers": ["scarf"],
        "dresses": ["frock"],
    },
}
# Per template of fashion_mini.TEMPLATES, in the same order.
TEST_ONLY_ORDERS: list[tuple[str, ...]] = [
    ("{type} {gender}",),
    ("{type} {colour}",),
    ("{colour} {gender} {type}", "{type} {colour} {gender}"),
    ("{type} {usage}",),
    ("{usage} {gender} {type}",),
    ("{colour} {usage} {type} {gender}",),
]
REORDER_RATE = 0.5
TYPO_RATE = 0.5


def seen_forms(attribute: str, value: str) -> list[str]:
    """The forms training and validation queries may use (the table minus the held-out ones)."""
    held_out = HELD_OUT_FORMS.get(attribute, {}).get(value, [])
    return [form for form in surface_forms(attribute, value) if form not in held_out]


def unseen_forms(attribute: str, value: str) -> list[str]:
    """Forms only test queries use; empty when a value has none."""
    return HELD_OUT_FORMS.get(attribute, {}).get(value, []) + TEST_ONLY_FORMS.get(
        attribute, {}
    ).get(value, [])


def val_forms(attribute: str, value: str) -> list[str]:
    """Forms only validation queries use; empty when a value has none."""
    return VAL_ONLY_FORMS.get(attribute, {}).get(value, [])


def all_forms(attribute: str, value: str) -> list[str]:
    return (surface_forms(attribute, value) + TEST_ONLY_FORMS.get(attribute, {}).get(value, [])
            + val_forms(attribute, value))


def _word_sequences(*tables: dict[str, dict[str, list[str]]]) -> set[tuple[str, ...]]:
    return {tuple(words(f)) for t in tables for v in t.values() for fs in v.values() for f in fs}


def held_out_word_sequences() -> set[tuple[str, ...]]:
    """Every held-out and test-only form as a word sequence (what the disjointness check looks for)."""
    return _word_sequences(HELD_OUT_FORMS, TEST_ONLY_FORMS)


def val_only_word_sequences() -> set[tuple[str, ...]]:
    """Every validation-only form as a word sequence."""
    return _word_sequences(VAL_ONLY_FORMS)


def known_words(lookup) -> set[str]:
    """Every word of every surface form in ``lookup``: a typo makes a word outside it."""
    return {w for key in lookup for w in key} | {"for"}


def _seen_wording(query: FashionQuery, seed: int, lookup) -> str | None:
    rng = random.Random(f"{seed}|seen|{query.template}|{query.named}")
    text = write_query(query.template, query.named, rng, forms=seen_forms)
    return text if explain_query(text, lookup) == query.attributes else None


def _val_wording(query: FashionQuery, seed: int, lookup, known_words: set[str]) -> str | None:
    rng = random.Random(f"{seed}|val|{query.template}|{query.named}")
    has_new_form = any(val_forms(a, v) for a, v in query.named)
    text = write_query(query.template, query.named, rng,
                       forms=lambda a, v: val_forms(a, v) or seen_forms(a, v))
    if explain_query(text, lookup) != query.attributes:
        return None
    if rng.random() < TYPO_RATE or not has_new_form:
        text = add_typo(text, rng, known_words)
    return text


def _unseen_wording(query: FashionQuery, seed: int, lookup, known_words: set[str]) -> str | None:
    rng = random.Random(f"{seed}|unseen|{query.template}|{query.named}")

    def forms(attribute: str, value: str) -> list[str]:
        return unseen_forms(attribute, value) or seen_forms(attribute, value)

    has_new_form = any(unseen_forms(a, v) for a, v in query.named)
    reorder = rng.random() < REORDER_RATE
    typo = rng.random() < TYPO_RATE
    if not (has_new_form or reorder or typo):
        reorder = True  # every test query differs from training in at least one way
    while True:
        orders = TEST_ONLY_ORDERS[query.template] if reorder else None
        text = write_query(query.template, query.named, rng, forms=forms, patterns=orders)
        if explain_query(text, lookup) != query.attributes:
            return None  # ambiguous wording: judged wrongly, so not used
        misspelt = add_typo(text, rng, known_words) if typo else text
        if has_new_form or reorder or misspelt != text:
            return misspelt
        reorder = True  # the typo found no word long enough: reorder instead


def build_unseen_phrasing_queries(
    products: list[Product],
    split_of: Callable[[str], str],
    seed: int = 0,
    max_queries: int = 1500,
    min_relevant: int = 2,
) -> list[QueryRecord]:
    """fashion-mini's query log with each product asked for in its split's wordings.

    ``split_of`` names a product's split ("train", "val" or "test"). The query
    shapes and their relevant products are those of
    :func:`~makevl.data.fashion_mini.build_query_specs`; a shape with a wording
    that cannot be explained unambiguously is dropped.
    """
    lookup = surface_lookup(products, forms=all_forms)
    known = known_words(lookup)
    records: list[QueryRecord] = []
    taken: set[str] = set()
    for line, query in enumerate(build_query_specs(products, seed, max_queries, min_relevant), 1):
        seen = _seen_wording(query, seed, lookup)
        unseen = _unseen_wording(query, seed, lookup, known)
        if seen is None or unseen is None or unseen in taken or seen in taken:
            continue
        val = _val_wording(query, seed, lookup, known)
        if val is None or val in taken or val == unseen:
            val = seen  # validation keeps the shape as training words it
        taken |= {seen, unseen, val}
        wording = {"train": seen, "val": val, "test": unseen}
        records += [QueryRecord(wording[split_of(pid)], pid, 1.0, "fashion-mini:unseen", line)
                    for pid in query.relevant]
    return records

