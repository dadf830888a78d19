"""What query spelling correction costs per query, and how many queries it changes.

    python benchmarks/spelling_cost.py CHECKPOINT [--unseen-phrasing] [--passes 5]

Loads the checkpoint's corrector (as ``load_checkpoint`` builds it) and corrects the test queries of
the checkpoint's shop one at a time, as the server does. Prints the one-time
load cost and the median time per query over ``--passes`` passes.
"""

from __future__ import annotations

import argparse
import statistics
import time

from makevl.data.shop import load_shop
from makevl.models.checkpoint import load_checkpoint
from makevl.spelling import english_counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--unseen-phrasing", action="store_true",
                        help="the test queries of the unseen-phrasing condition (fashion-mini)")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()

    started = time.perf_counter()
    english_counts()
    loaded = time.perf_counter()
    model, cfg, _ = load_checkpoint(args.checkpoint)
    if model.spelling is None:
        raise SystemExit(f"{args.checkpoint}: trained without model.spelling_correction")
    corrector = model.spelling
    cfg.data.unseen_phrasing = args.unseen_phrasing
    queries = list(load_shop(cfg.data).query_set("test").queries.values())
    per_query = []
    for _ in range(args.passes):
        start = time.perf_counter()
        corrected = [corrector.correct(query) for query in queries]
        per_query.append((time.perf_counter() - start) / len(queries) * 1e6)
    changed = sum(a != b for a, b in zip(queries, corrected))
    print(f"English dictionary: {len(english_counts()):,} words, loaded once in "
          f"{(loaded - started) * 1000:.0f} ms")
    print(f"corrector: {len(corrector):,} shop words")
    print(f"{len(queries)} test queries, {changed} changed; "
          f"{statistics.median(per_query):.1f} us per query (median of {args.passes} passes)")


if __name__ == "__main__":
    main()
