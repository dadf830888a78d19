"""Query augmentation for training: the sloppy ways shoppers type, drawn per sample.

Templated training queries are clean; real ones drop words, shuffle them and
misspell them. Each training query may get, independently, one typo, one word
dropped, and its words reordered (``train.augment_*`` rates, all 0 by default;
fashion-mini sets them); ``train.augment_pseudo_typo`` misspells KE's keyword
pseudo-queries the same way. Draws come from the dataset's per-sample
generator, so the same seed, epoch and sample give the same augmented query on
every run, rank and resume.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from makevl.config import TrainConfig
from makevl.data.text import add_typo

CONNECTIVES = frozenset({"for", "with", "and", "in", "of"})  # reordering drops these


@dataclass(frozen=True)
class QueryAugmenter:
    typo: float = 0.0  # chance of one typo in a word of 4+ letters
    drop_word: float = 0.0  # chance of dropping one word (queries of 3+ words)
    reorder: float = 0.0  # chance of shuffling the content words

    @classmethod
    def from_config(cls, train: TrainConfig) -> QueryAugmenter | None:
        """The configured augmenter, or None when every rate is 0."""
        augmenter = cls(train.augment_typo, train.augment_drop_word, train.augment_reorder)
        return augmenter if augmenter != cls() else None

    @classmethod
    def for_pseudo_queries(cls, train: TrainConfig) -> QueryAugmenter | None:
        """Typos only: a pseudo-query is 1-3 keywords in random order already."""
        return cls(typo=train.augment_pseudo_typo) if train.augment_pseudo_typo else None

    def __call__(self, query: str, rng: random.Random) -> str:
        tokens = query.split()
        if rng.random() < self.drop_word and len(tokens) >= 3:
            tokens.pop(rng.randrange(len(tokens)))
        if rng.random() < self.reorder:
            tokens = [t for t in tokens if t not in CONNECTIVES]
            rng.shuffle(tokens)
        text = " ".join(tokens)
        return add_typo(text, rng) if rng.random() < self.typo else text
