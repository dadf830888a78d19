"""Query spelling correction against the shop's own words.

A shopper's typo ("tshrits", "blakc") leaves a word that no title, attribute
value, keyword or training query contains; the query tower has never seen it
and its word pieces mean something else. Product search engines fix such words
before retrieval, the way Elasticsearch's term suggester or SymSpell do: an
unknown word one edit (a letter dropped, added, changed, or two swapped) from
a word of the catalog becomes that word, the most frequent one where several
are that close.

A word is left alone when it is known: in the catalog's words, shorter than
``min_letters`` (3; two-letter words have too many neighbours to guess from),
not purely letters (sizes, model numbers), a word of the English frequency
dictionary SymSpell ships (82,834 words), or a whole word of the query tower's
tokenizer. A real word is not a typo even where the catalog lacks it: "tees" is
one edit from "ties" and "hat" from "cat", but a shopper who types them may
mean them, and the pretrained query tower may know what they mean.

Unless the shop makes the typo far likelier (``real_word_ratio``, the config's
``model.spelling_real_word_ratio``; 0 turns it off): a typo can land on a real
word ("wite", "shes", "navvy" are in the dictionary). Weighed as a noisy
channel would, a real word becomes the shop word one edit away when that word's
share of the shop's words is at least ``real_word_ratio`` times the typed
word's share of English: "wite" -> "white" (a ratio of about 10^5 on
fashion-mini), while "hat" or "purse" (about 3) stay.

A typo of a word the shop does not have ("everryday", "ladiees") finds no
catalog word one edit away. With ``english_fallback`` (the config's
``model.spelling_english_fallback``) such a word becomes the most frequent
English word one edit away instead, as SymSpell would with its English
dictionary: the query tower knows "everyday" and "ladies", not their typos.

The catalog's words are counted once, when training starts, and saved with
every checkpoint as ``spelling.json``, so every place that encodes a query
(eval, the index, ONNX runtimes, the server) corrects it the same way. The file
is JSON; SymSpell's own pickle format is never used.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection, Iterable
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from symspellpy import SymSpell, Verbosity

from makevl.config import ModelConfig
from makevl.data.catalog import Product, QueryRecord
from makevl.data.text import words

SPELLING = "spelling.json"
FORMAT = "makevl-spelling/1"
MAX_EDITS = 1
_TOKEN_RE = re.compile(r"[^\W_]+")  # the words of data.text.words, found in the original text
_ENGLISH = "frequency_dictionary_en_82_765.txt"  # installed with symspellpy: "word count" lines


@cache
def english_counts() -> dict[str, int]:
    """SymSpell's English frequency dictionary: word -> count in its corpus."""
    text = (files("symspellpy") / _ENGLISH).read_text("utf-8")
    pairs = (line.split(" ", 1) for line in text.splitlines() if line)
    return {word: int(count) for word, count in pairs}


@cache
def english_speller() -> SymSpell:
    """SymSpell over that dictionary: the English fallback's lookup (built once, about a second)."""
    speller = SymSpell(max_dictionary_edit_distance=MAX_EDITS)
    speller.load_dictionary(str(files("symspellpy") / _ENGLISH), term_index=0, count_index=1)
    return speller


def config_rules(model_cfg: ModelConfig) -> dict[str, Any]:
    """The corrector's settings that the run's config holds (the file holds the words)."""
    return {"english_fallback": model_cfg.spelling_english_fallback,
            "real_word_ratio": model_cfg.spelling_real_word_ratio}


class SpellingCorrector:
    """Rewrites a query's unknown words to the catalog word one edit away."""

    def __init__(
        self,
        counts: dict[str, int],
        min_letters: int = 3,
        known: Collection[str] = (),
        english_fallback: bool = False,
        real_word_ratio: float = 0.0,
    ) -> None:
        if min_letters < 2:
            raise ValueError(f"spelling: min_letters must be >= 2, got {min_letters}")
        if real_word_ratio < 0:
            raise ValueError(f"spelling: real_word_ratio must be >= 0, got {real_word_ratio}")
        self.counts = dict(counts)
        self.min_letters = min_letters
        self.known = known  # treated as English words are: the tokenizer's words
        self.english_fallback = english_fallback
        self.real_word_ratio = real_word_ratio
        self._english = english_counts()
        self._shop_total = sum(self.counts.values())
        self._english_total = sum(self._english.values())
        self._symspell = SymSpell(max_dictionary_edit_distance=MAX_EDITS)
        for word, count in self.counts.items():
            self._symspell.create_dictionary_entry(word, count)

    def __len__(self) -> int:
        return len(self.counts)

    def correct_word(self, word: str) -> str:
        """The catalog word ``word`` was meant to be; ``word`` itself when it is known."""
        lower = word.lower()
        if len(lower) < self.min_letters or not lower.isalpha() or lower in self.counts:
            return word
        if lower in self._english or lower in self.known:
            return self._real_word_typo(lower) or word
        found = self._symspell.lookup(lower, Verbosity.TOP, MAX_EDITS)
        if not found and self.english_fallback:
            found = english_speller().lookup(lower, Verbosity.TOP, MAX_EDITS)
        return found[0].term if found else word

    def _real_word_typo(self, real_word: str) -> str | None:
        """The shop word one edit away that ``real_word`` more likely misspells, if any: its
        share of the shop's words is >= ``real_word_ratio`` x the typed word's share of English
        (a tokenizer word the dictionary lacks counts once)."""
        if not self.real_word_ratio:
            return None
        found = self._symspell.lookup(real_word, Verbosity.TOP, MAX_EDITS)
        english_share = max(self._english.get(real_word, 0), 1) / self._english_total
        if found and found[0].count / self._shop_total >= self.real_word_ratio * english_share:
            return found[0].term
        return None

    def correct(self, text: str) -> str:
        """``text`` with each unknown word corrected; everything else as it was."""
        return _TOKEN_RE.sub(lambda match: self.correct_word(match.group()), text)

    def correct_all(self, texts: Iterable[str]) -> list[str]:
        return [self.correct(text) for text in texts]

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> None:
        ranked = dict(sorted(self.counts.items(), key=lambda item: (-item[1], item[0])))
        data = {"format": FORMAT, "min_letters": self.min_letters, "words": ranked}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(
        cls,
        path: str | Path,
        known: Collection[str] = (),
        english_fallback: bool = False,
        real_word_ratio: float = 0.0,
    ) -> SpellingCorrector:
        """A saved corrector; ``known``, ``english_fallback`` and ``real_word_ratio`` as for
        the constructor (the run's config says them, the file does not)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
            counts = data["words"]
            min_letters = data["min_letters"]
            if not isinstance(min_letters, int) or not isinstance(counts, dict):
                raise TypeError("'min_letters' must be an integer and 'words' an object")
            bad = [w for w, c in counts.items() if not isinstance(c, int) or c < 1 or not w]
            if bad:
                raise ValueError(f"words need a positive integer count: {bad[:5]}")
            return cls(counts, min_letters, known, english_fallback, real_word_ratio)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a spelling file: {exc}") from exc


def build_spelling(
    products: Iterable[Product],
    queries: Iterable[QueryRecord],
    known: Collection[str] = (),
    english_fallback: bool = False,
    real_word_ratio: float = 0.0,
) -> SpellingCorrector:
    """Count the words of the products' titles, attribute values and keywords and of the queries."""
    counts: Counter[str] = Counter()
    for product in products:
        counts.update(words(product.title))
        for value in (product.attributes or {}).values():
            counts.update(words(str(value)))
        for keyword in product.keywords:
            counts.update(words(keyword))
    for record in queries:
        counts.update(words(record.query))
    return SpellingCorrector(dict(counts), known=known, english_fallback=english_fallback,
                             real_word_ratio=real_word_ratio)
