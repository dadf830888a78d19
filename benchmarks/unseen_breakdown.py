"""Where the unseen-phrasing points go: mean NDCG@10 per kind of change in the test query.

Reads a per-query file of an unseen-phrasing report and groups its queries by
whether they contain a held-out or test-only form and a typo, both as
``data/unseen_phrasing.py`` defines them (a typo leaves a word that no surface
form of the catalog contains). Analysis of finished test results, never used to
choose a setting.

    python benchmarks/unseen_breakdown.py reports/fashion-mini-unseen-phrasing/per_query/make.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from makevl.config import bundled_config
from makevl.data.fashion_mini import surface_lookup
from makevl.data.shop import load_shop
from makevl.data.text import words
from makevl.data.unseen_phrasing import all_forms, held_out_word_sequences, known_words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("per_query", nargs="+", help="per_query/<system>.jsonl of the report")
    args = parser.parse_args()

    products = load_shop(bundled_config("fashion-mini").data).products
    forms = [" ".join(sequence) for sequence in held_out_word_sequences()]
    known = known_words(surface_lookup(products, forms=all_forms))
    for path in args.per_query:
        groups: dict[str, list[float]] = {}
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            text = f" {' '.join(words(row['query']))} "
            new_form = any(f" {form} " in text for form in forms)
            typo = any(w not in known for w in text.split())
            key = (("a held-out or test-only form" if new_form else "no new form")
                   + (", a typo" if typo else ", no typo"))
            groups.setdefault(key, []).append(row["metrics"]["ndcg@10"])
        print(path)
        print("| test queries with | queries | mean NDCG@10 |\n| --- | --- | --- |")
        for key, values in sorted(groups.items()):
            print(f"| {key} | {len(values)} | {statistics.mean(values):.3f} |")


if __name__ == "__main__":
    main()
