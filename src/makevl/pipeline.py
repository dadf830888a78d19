"""The README's main job, end to end on the built-in demo shop (``makevl demo``).

make the data -> validate it -> print its statistics -> train MAKE -> evaluate
-> build the index -> search a few sample queries -> say how to serve.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from makevl.config import resolve_config


def _stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def run_demo(
    out: str | Path = "runs/demo",
    products: int = 2000,
    seed: int = 0,
    config: str | None = None,
    overrides: list[str] | None = None,
) -> int:
    """Run every stage, printing as it goes; return the exit code of the first failure (or 0)."""
    from makevl.data.demo import make_demo_shop
    from makevl.data.shop import load_shop
    from makevl.data.stats import format_statistics, shop_statistics
    from makevl.data.validate import validate

    out = Path(out)
    data_dir = out / "data"
    overrides = [
        "data.preset=demo",
        f"data.catalog={data_dir / 'catalog.csv'}",
        f"data.queries={data_dir / 'queries.csv'}",
        f"train.out_dir={out / 'train'}",
        *(overrides or []),
    ]
    cfg = resolve_config(config or "demo-tiny", overrides)  # fails before any work

    _stage("1. demo shop")
    start = time.perf_counter()
    info = make_demo_shop(data_dir, n_products=products, seed=seed)
    print(f"wrote {info['products']} products and {info['queries']} queries to {data_dir} "
          f"in {time.perf_counter() - start:.1f} s")

    _stage("2. validate")
    report = validate(data_dir / "catalog.csv", data_dir / "queries.csv")
    print(report.to_text())
    if not report.ok:
        return 1

    _stage("3. statistics")
    shop = load_shop(cfg.data)
    print(format_statistics(shop_statistics(shop)))

    _stage("4. train MAKE")
    from makevl.training.trainer import result_summary, train

    shutil.rmtree(cfg.train.out_dir, ignore_errors=True)  # the demo always starts fresh
    result = train(cfg)
    print(result_summary(result))
    checkpoint = result.best_checkpoint or result.checkpoint

    _stage("5. evaluate on the test split (MAKE vs BM25 on titles)")
    from makevl.evaluation.baselines import BM25System
    from makevl.evaluation.evaluator import EmbeddingSystem, RetrievalEvaluator, comparison_table
    from makevl.models.checkpoint import load_checkpoint
    from makevl.models.inference import MakeEncoder

    model = MakeEncoder(load_checkpoint(checkpoint)[0])
    evaluator = RetrievalEvaluator(shop.query_set("test"), category_attribute=shop.category_attribute,
                                   bootstrap=200)
    results = [
        evaluator.evaluate(EmbeddingSystem("make", model.encode_queries, model.encode_products)),
        evaluator.evaluate(BM25System()),
    ]
    print(comparison_table(results))

    _stage("6. build the product index")
    from makevl.index.actions import build_from_catalog
    from makevl.index.search import Searcher

    index_dir = out / "index"
    print(build_from_catalog(index_dir, checkpoint=checkpoint, catalog=data_dir / "catalog.csv")
          .summary())

    _stage("7. search")
    searcher = Searcher(index_dir)
    for query in SAMPLE_QUERIES:
        print(f"\n> makevl search {index_dir} {query!r} -k 5")
        for rank, hit in enumerate(searcher.search([query], k=5)[0], 1):
            weights = "/".join(f"{w:.2f}" for w in hit.modality_weights.values())
            print(f"{rank:>3}  {hit.score:.3f}  {hit.id}  {hit.title}  (title/image/fused {weights})")

    print(f"\nServe it:  .venv/bin/makevl serve {index_dir}   then open http://127.0.0.1:8000/")
    return 0


# Queries whose answer needs the photo (pattern), the title (storage size) or both.
SAMPLE_QUERIES = ["red striped dress", "256gb phone", "black leather bag"]
