"""Small text helpers shared by the data layer and the harder evaluation condition."""

from __future__ import annotations

import random
import re
from collections.abc import Collection

# Colour words as they appear in product titles (lower case). Used to build the
# --sparse-titles condition, where only the photo still tells the colour.
COLOUR_WORDS = ["black", "white", "grey", "gray", "red", "blue", "navy", "green", "yellow", "orange", "pink", "purple", "brown", "beige", "maroon", "olive", "teal", "turquoise", "cream", "khaki", "silver", "gold", "magenta", "lavender", "peach", "mustard", "charcoal", "burgundy", "rust", "coffee", "tan", "copper", "bronze", "fluorescent", "multi", "off-white", "sea-green", "skin", "nude", "mauve", "taupe", "metallic"]

_COLOUR_RE = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in sorted(COLOUR_WORDS, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


def strip_colour_words(title: str) -> str:
    """Remove colour words from a title and tidy the spaces left behind."""
    stripped = _COLOUR_RE.sub(" ", title)
    return re.sub(r"\s+", " ", stripped).strip(" -,/")


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace; what keyword matching compares."""
    return re.sub(r"\s+", " ", text.lower()).strip()


# Three word splits, kept apart because each one's results depend on it:
# words() for matching, keyword_terms() for mining keywords, bm25_tokens() for BM25.
_WORD_RE = re.compile(r"[^\W_]+")
_TERM_RE = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*")
_TOKEN_RE = re.compile(r"\w+")
_POSSESSIVE_RE = re.compile(r"['’]s\b")


def words(text: str) -> list[str]:
    """Lower-case words with hyphens and possessives split off ("Men's T-Shirt" -> men t shirt).

    Keyword and query matching compare these word sequences, so "off-white"
    matches "off white" and "men's" matches "men".
    """
    return _WORD_RE.findall(_POSSESSIVE_RE.sub("", text.lower()))


def keyword_terms(text: str) -> list[str]:
    """Lower-case words, hyphenated ones whole, no possessives ("Men's T-Shirt": men t-shirt).

    Keyword mining counts "t-shirt" as one term, so "shirt" alone does not match it.
    """
    return _TERM_RE.findall(_POSSESSIVE_RE.sub("", text.lower()))


def bm25_tokens(text: str) -> list[str]:
    """Lower-case ``\\w+`` tokens, for the BM25 baseline: no stemming, no stop-words,
    possessive "s" kept ("Men's" -> men s), as the reported BM25 figures were made."""
    return _TOKEN_RE.findall(text.lower())


class TextError(ValueError):
    """A string that cannot go to a tokenizer (it is not valid UTF-8)."""


def check_text(text: str, what: str = "text") -> str:
    """Return ``text`` if it is valid UTF-8, else raise :class:`TextError` naming ``what``.

    A Python str can hold lone surrogates (JSON ``"\\ud800"``, or a non-UTF-8
    command-line argument decoded with ``surrogateescape``); tokenizers raise
    TypeError on them, so the API and the CLI check every query first.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextError(
            f"{what} is not valid UTF-8: character {exc.start} is "
            f"{text[exc.start]!r} (a lone surrogate)"
        ) from None
    return text


TYPO_MIN_LETTERS = 4  # shorter words ("tee", "men") are left alone


def add_typo(text: str, rng: random.Random, known_words: Collection[str] = ()) -> str:
    """``text`` with one letter dropped, doubled or swapped in one long word.

    The misspelt word is never a known word ("tees" -> "tee" is not a typo);
    ``text`` comes back unchanged when no word can be misspelt.
    """
    tokens = text.split()
    candidates = [i for i, t in enumerate(tokens) if t.isalpha() and len(t) >= TYPO_MIN_LETTERS]
    rng.shuffle(candidates)
    for i in candidates:
        word = tokens[i]
        at = rng.randrange(1, len(word) - 1)  # the first letter stays
        edits = [
            word[:at] + word[at + 1 :],  # dropped
            word[:at] + word[at] + word[at:],  # doubled
            word[:at] + word[at + 1] + word[at] + word[at + 2 :],  # swapped with the next
        ]
        for typo in rng.sample(edits, len(edits)):
            if typo != word and typo not in known_words:
                return " ".join(tokens[:i] + [typo] + tokens[i + 1 :])
    return text
