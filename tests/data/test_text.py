"""The three word splits differ on purpose; each keeps the results it was made for."""

from makevl.data.text import bm25_tokens, keyword_terms, words

TITLE = "Men's Off-White T-Shirt, rock'n'roll_print"


def test_words_split_hyphens_and_drop_possessives():
    assert words(TITLE) == ["men", "off", "white", "t", "shirt", "rock", "n", "roll", "print"]


def test_keyword_terms_keep_hyphenated_words_whole():
    assert keyword_terms(TITLE) == ["men", "off-white", "t-shirt", "rock'n'roll", "print"]


def test_bm25_tokens_keep_the_possessive_s_and_underscores():
    assert bm25_tokens(TITLE) == [
        "men",
        "s",
        "off",
        "white",
        "t",
        "shirt",
        "rock",
        "n",
        "roll_print",
    ]
