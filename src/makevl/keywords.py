"""The keyword vocabulary behind MAKE's Keyword Enhancement.

Queries are two or three words; titles are long and keyword-stuffed. KE bridges
the two with a vocabulary mined from the catalog: attribute values (colour,
category, gender, usage, brand...), the title terms that tell products apart
(tf-idf over titles, or association with query words when a query log
exists), and any keyword list the user supplies. Each product gets the
keywords it carries; training samples keyword pseudo-queries from them and
teaches the query encoder to predict them.

Matching is on word sequences: whole words, case-insensitive, possessives
dropped. A hyphenated word is one word ("shirt" does not match "T-shirt") that
also matches its spaced spelling ("off-white" == "off white"), and multi-word
keywords such as "running shoes" work.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from makevl.data.catalog import Product, QueryRecord
from makevl.data.text import keyword_terms, normalize_text

SOURCES = ("attribute", "user", "title")  # precedence when a keyword comes from several

# fmt: off
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is",
    "it", "its", "of", "on", "or", "the", "this", "to", "with", "without", "your", "you", "our",
    "we", "i", "me", "my", "not", "no", "all", "any", "each", "per", "via", "into", "over", "under",
    "up",
})
# Marketplace filler: frequent in titles, never what a product is.
FILLER = frozenset({
    "new", "free", "shipping", "sale", "offer", "offers", "deal", "deals", "discount",
    "discounted", "buy", "best", "latest", "hot", "original", "genuine", "quality", "cheap",
    "price", "sell", "seller", "stock", "brand", "fashion",
})
# fmt: on
PLACEHOLDERS = frozenset({"na", "n/a", "none", "null", "nan", "unknown", "other", "-"})

def keyword_key(keyword: str) -> tuple[str, ...]:
    """What makes two keywords the same: their words, hyphens split ("off-white" == "off white")."""
    return tuple(part for token in keyword_terms(keyword) for part in token.split("-"))


@dataclass
class KeywordVocab:
    keywords: list[str]
    index: dict[str, int]  # keyword -> position in ``keywords``
    product_keywords: dict[str, list[str]]  # product id -> its keywords, in order
    sources: dict[str, str]  # keyword -> "attribute" | "title" | "user"
    _by_first_word: dict[str, list[tuple[tuple[str, ...], str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    # keyword_key -> keyword, so "off-white" and "off white" are one keyword.
    _by_key: dict[tuple[str, ...], str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for keyword in self.keywords:
            split = keyword_key(keyword)
            self._by_key.setdefault(split, keyword)
            for key in {split, ("-".join(split),)}:  # "off white" and "off-white"
                self._by_first_word.setdefault(key[0], []).append((key, keyword))
        for candidates in self._by_first_word.values():
            candidates.sort(key=lambda item: (-len(item[0]), item[1]))  # longest first

    def __len__(self) -> int:
        return len(self.keywords)

    def keywords_of(self, product_id: str) -> list[str]:
        try:
            return self.product_keywords[product_id]
        except KeyError:
            raise KeyError(
                f"product {product_id!r} is not in the keyword vocabulary "
                f"({len(self.product_keywords)} products); rebuild it for this catalog"
            ) from None

    def ids_of(self, product_id: str) -> list[int]:
        return [self.index[k] for k in self.keywords_of(product_id)]

    def match_product(self, product: Product, attribute_names: list[str]) -> list[str]:
        """The vocabulary keywords a product carries: attribute values, title terms, its own list."""
        found = attribute_values(product, attribute_names) + self.keywords_in_text(product.title)
        found += [normalize_text(k) for k in product.keywords]
        keys = (keyword_key(k) for k in found)
        return list(dict.fromkeys(self._by_key[key] for key in keys if key in self._by_key))

    def keywords_in_text(self, text: str) -> list[str]:
        """Vocabulary keywords a query or title mentions, left to right.

        Longest match wins and matches do not overlap: "running shoes" yields
        "running shoes", not also "shoes".
        """
        return self._match(text)[0]

    def _match(self, text: str) -> tuple[list[str], list[str]]:
        """(keywords found, words left over)."""
        words = keyword_terms(text)
        found: list[str] = []
        rest: list[str] = []
        i = 0
        while i < len(words):
            for key, keyword in self._by_first_word.get(words[i], []):
                if tuple(words[i : i + len(key)]) == key:
                    if keyword not in found:
                        found.append(keyword)
                    i += len(key)
                    break
            else:
                rest.append(words[i])
                i += 1
        return found, rest

    def save(self, path: str | Path) -> None:
        data = {
            "keywords": self.keywords,
            "sources": self.sources,
            "product_keywords": self.product_keywords,
        }
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> KeywordVocab:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            keywords = list(data["keywords"])
            sources = dict(data["sources"])
            product_keywords = {pid: list(kws) for pid, kws in data["product_keywords"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a keyword vocabulary file: {exc!r}") from exc
        index = {k: i for i, k in enumerate(keywords)}
        if len(index) != len(keywords):
            raise ValueError(f"{path}: duplicate keywords")
        if set(sources) != set(index) or not set(sources.values()) <= set(SOURCES):
            raise ValueError(f"{path}: 'sources' must give one of {SOURCES} for every keyword")
        for pid, kws in product_keywords.items():
            unknown = [k for k in kws if k not in index]
            if unknown:
                raise ValueError(
                    f"{path}: product {pid!r} has keywords not in the vocabulary: {unknown}"
                )
        return cls(keywords, index, product_keywords, sources)


def candidate_terms(words: list[str]) -> list[str]:
    """Words that could be keywords: no stopwords, filler, numbers or 1-letter tokens."""
    return [
        term
        for term in words
        if len(term) >= 2 and any(c.isalpha() for c in term) and term not in STOPWORDS | FILLER
    ]


def _is_mined_keyword(value: str) -> bool:
    return len(value) >= 2 and any(c.isalpha() for c in value) and value not in PLACEHOLDERS


def attribute_values(product: Product, attribute_names: list[str]) -> list[str]:
    """The product's normalized attribute values that can be keywords."""
    values = (normalize_text(product.attributes.get(name, "")) for name in attribute_names)
    return [v for v in values if _is_mined_keyword(v)]


def _rank_title_terms(
    terms_of: dict[str, set[str]],
    queries: list[QueryRecord] | None,
    min_df: int,
    max_df: float,
) -> list[str]:
    """Title terms, best first: by association with query words if a log is given, else tf-idf."""
    df = Counter(t for terms in terms_of.values() for t in terms)
    n = len(terms_of)
    eligible = {
        # Summed binary tf-idf: frequent enough to matter, rare enough to tell products apart.
        t: d * math.log(n / d)
        for t, d in df.items()
        if d >= min_df and d < n and d <= max_df * n
    }
    association: dict[str, float] = {}
    if queries:
        # How strongly a title term goes with some query word over (query, product)
        # pairs: normalised PMI, weighted by log support so one-off pairs don't win.
        pairs: Counter = Counter()
        term_count: Counter = Counter()
        word_count: Counter = Counter()
        total = 0
        for record in queries:
            if record.label <= 0 or record.product_id not in terms_of:
                continue
            terms = terms_of[record.product_id] & eligible.keys()
            query_words = set(keyword_terms(record.query)) - STOPWORDS
            total += 1
            term_count.update(terms)
            word_count.update(query_words)
            pairs.update((t, w) for t in terms for w in query_words)
        for (t, w), count in pairs.items():
            if count < min_df or count == total:
                continue
            p_tw = count / total
            pmi = math.log(count * total / (term_count[t] * word_count[w]))
            npmi = pmi / -math.log(p_tw)
            association[t] = max(association.get(t, 0.0), npmi * math.log1p(count))
    # Terms with query evidence first, then by tf-idf; ties alphabetical.
    return sorted(eligible, key=lambda t: (-association.get(t, 0.0), -eligible[t], t))


def build_vocabulary(
    products: list[Product],
    queries: list[QueryRecord] | None = None,
    extra_keywords: list[str] | None = None,
    max_title_terms: int = 500,
    min_df: int = 2,
    attribute_names: list[str] | None = None,
    max_df: float = 0.5,
) -> KeywordVocab:
    """Mine the keyword vocabulary of a catalog and each product's keywords.

    ``attribute_names=None`` uses every attribute column the products carry.
    Title terms must appear in at least ``min_df`` titles and at most a
    ``max_df`` share of them; ``max_title_terms`` keeps the best.
    """
    ids = [p.id for p in products]
    duplicates = sorted(pid for pid, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate product ids: {duplicates[:5]}")
    if attribute_names is None:
        attribute_names = sorted({name for p in products for name in p.attributes})

    keywords: list[str] = []
    sources: dict[str, str] = {}
    # keyword_key -> keyword, so "off-white" and "off white" are one keyword.
    by_key: dict[tuple[str, ...], str] = {}

    def add(keyword: str, source: str) -> None:
        key = keyword_key(keyword)
        if key and key not in by_key:
            by_key[key] = keyword
            keywords.append(keyword)
            sources[keyword] = source

    for value in sorted({v for p in products for v in attribute_values(p, attribute_names)}):
        add(value, "attribute")
    for keyword in extra_keywords or []:
        add(normalize_text(keyword), "user")
    for keyword in sorted({normalize_text(k) for p in products for k in p.keywords}):
        add(keyword, "user")
    # Title terms come from what the keywords so far leave of each title, so the
    # "flip" of "flip flops" does not become a keyword of its own.
    known = KeywordVocab(list(keywords), {}, {}, dict(sources))
    terms_of = {p.id: set(candidate_terms(known._match(p.title)[1])) for p in products}
    for term in _rank_title_terms(terms_of, queries, min_df, max_df)[:max_title_terms]:
        add(term, "title")

    vocab = KeywordVocab(keywords, {k: i for i, k in enumerate(keywords)}, {}, sources)
    for product in products:
        vocab.product_keywords[product.id] = vocab.match_product(product, attribute_names)
    return vocab
