"""Where the unseen-phrasing points go: mean NDCG@10 per kind of change in the test query.

Reads a per-query file of an unseen-phrasing report and groups its queries by
whether they contain a held-out or test-only form (``data/unseen_phrasing.py``)
and a typo (a word that no fashion-mini query and no such form contains; an
approximation). Analysis of finished test results, never used to choose a setting.

    python benchmarks/unseen_breakdown.py reports/fashion-mini-unseen-phrasing/per_query/make.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from makevl.config import bundled_config
from makevl.data.shop import load_shop
from makevl.data.text import words
from makevl.data.unseen_phrasing import HELD_OUT_FORMS, TEST_ONLY_FORMS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("per_query", nargs="+", help="per_query/<system>.jsonl of the report")
    args = parser.parse_args()

    shop = load_shop(bundled_config("fashion-mini").data)  # seen phrasing: every kept form
    forms = [" ".join(words(form)) for table in (HELD_OUT_FORMS, TEST_ONLY_FORMS)
             for by_value in table.values() for values in by_value.values() for form in values]
    known = {w for record in shop.queries for w in words(record.query)}
    known |= {w for form in forms for w in form.split()}
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
