"""Small text helpers shared by the data layer and the harder evaluation condition."""

from __future__ import annotations

import re

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


_WORD_RE = re.compile(r"[^\W_]+")
_POSSESSIVE_RE = re.compile(r"['’]s\b")


def words(text: str) -> list[str]:
    """Lower-case words with hyphens and possessives split off ("Men's T-Shirt" -> men t shirt).

    Keyword and query matching compare these word sequences, so "off-white"
    matches "off white" and "men's" matches "men".
    """
    return _WORD_RE.findall(_POSSESSIVE_RE.sub("", text.lower()))


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
