"""Query latency and recall of the product index from 1k to 1M products.

For each catalog size: synthetic product vectors (unit vectors near a random
32-dim subspace: neither uniform noise nor clean clusters; see embedding_like),
indexed exactly (Flat) and approximately (HNSW32 up to 100k, IVF at 100k and
1M) through makevl's own FAISS vector backend with the Searcher's search
settings (efSearch 128, nprobe 64), plus a sweep of those settings. Reported per index: build products/s, search-only p50/p99 latency and
queries/s for one query at a time (as the server runs them), ANN recall@10
against exact, and end to end "text in, top-10 out" p50/p99: the query tower
encodes the text, then the index is searched (with a synthetic query vector
from the product distribution, so recall stays meaningful).

    python benchmarks/search_latency.py            # 1k, 10k, 100k, 1M (~6-10 min on 2 cores)
    python benchmarks/search_latency.py --quick    # 1k, 10k (~1 min)
    python benchmarks/search_latency.py --checkpoint runs/x/best   # a trained query tower
    python benchmarks/search_latency.py --sizes 10000,100000 --milvus --encoder hashing
        # Milvus Lite (exact FLAT and HNSW) beside FAISS Flat (~3 min)

Without --checkpoint the query tower is all-MiniLM-L6-v2 (the default MAKE text
backbone, loaded offline) plus a random projection to --dim.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sample_queries import QUERIES

from makevl.index.backends import create_backend
from makevl.index.backends import faiss as faiss_backend


def embedding_like(
    n: int, dim: int, basis: np.ndarray, seed: int, noise: float = 0.3
) -> np.ndarray:
    """Unit vectors near a random ``rank``-dim subspace: no clean clusters, like real embeddings.

    With rank 32 a query's 10th neighbour has cosine ~0.6 and its 100th ~0.5, so
    ANN indexes must work for their recall (well-separated clusters would
    flatter them). Generated in chunks: 1M x 256 float32 is 1 GB.
    """
    rng = np.random.default_rng(seed)
    rank = basis.shape[0]
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = rng.standard_normal((m, rank), dtype=np.float32) @ basis
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        block += rng.standard_normal((m, dim), dtype=np.float32) * (noise / np.sqrt(dim))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "qps": float(1000 / ms.mean()),
    }


class MiniLMQueryTower:
    """all-MiniLM-L6-v2 + a random projection to ``dim``: the cost of MAKE's query tower."""

    def __init__(self, dim: int) -> None:
        from makevl.evaluation.baselines import MiniLMEncoder

        self.encoder = MiniLMEncoder(batch_size=1)
        hidden = self.encoder.tower.hidden_size
        self.projection = np.random.default_rng(0).standard_normal((hidden, dim)).astype(np.float32)

    def encode_queries(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        v = self.encoder.encode(texts) @ self.projection
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def load_tower(args: argparse.Namespace):
    if args.checkpoint:
        from makevl.index.encoders import load_checkpoint_encoder

        model = load_checkpoint_encoder(args.checkpoint)[0]
        return model, f"checkpoint {args.checkpoint}"
    if args.encoder == "hashing":
        from makevl.index.encoders import HashingEncoder

        return HashingEncoder(args.dim), "hashing bag of words (no model)"
    return MiniLMQueryTower(args.dim), "all-MiniLM-L6-v2 + projection"


def time_searches(index, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    times, found = [], []
    for q in queries:
        start = time.perf_counter()
        _, ids = index.search(q[None], k)
        times.append(time.perf_counter() - start)
        found.append(ids[0])
    return times, np.array(found)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def build_backend(name: str, index_type: str, vectors: np.ndarray, folder: Path, args):
    """An index of ``vectors`` through makevl's backend seam, as `makevl index build` makes it."""
    dim = vectors.shape[1]
    defaults = {"ef_search": args.ef_search, "nprobe": args.nprobe}
    if name == "faiss":
        index = create_backend("faiss", dim, factory=index_type, exact_threshold=0, **defaults)
    else:  # Milvus Lite in this process, one database per index
        version = folder / f"{index_type}-{len(vectors)}" / "version"
        version.mkdir(parents=True)
        index = create_backend(
            "milvus", dim, version, index_type=index_type, exact_threshold=0, **defaults
        )
    index.upsert(np.arange(len(vectors), dtype=np.int64), vectors)
    if name == "milvus":
        index.save(version)  # builds the Milvus index of its type and flushes
    return index


def bench_size(n: int, args, tower, texts: list[str], folder: Path) -> list[dict]:
    dim, k = args.dim, 10
    basis = np.random.default_rng(1).standard_normal((args.rank, dim)).astype(np.float32)
    vectors = embedding_like(n, dim, basis, seed=2)
    queries = embedding_like(args.queries, dim, basis, seed=3)

    plans = [("faiss", "Flat", {})]
    if n <= 100_000:
        plans.append(("faiss", "HNSW32", {"ef_search": args.ef_search}))
    if n >= 100_000:
        nlist = 1024 if n >= 1_000_000 else 256
        plans.append(("faiss", f"IVF{nlist},Flat", {"nprobe": args.nprobe}))
    if args.milvus:
        plans += [("milvus", "FLAT", {}), ("milvus", "HNSW", {"ef_search": args.ef_search})]
    sweeps = {"ef_search": [32, 64, 256], "nprobe": [8, 16, 32, 128]}  # speed/recall trade-off
    defaults = {"ef_search": args.ef_search, "nprobe": args.nprobe}

    rows, truth = [], None
    for backend, factory, params in plans:
        faiss_backend.set_threads(os.cpu_count() or 1)  # builds use every core
        start = time.perf_counter()
        index = build_backend(backend, factory, vectors, folder, args)
        build_s = time.perf_counter() - start
        faiss_backend.set_threads(args.threads)  # one query per request, as the server runs them
        timed = queries if backend == "faiss" else queries[: args.milvus_queries]
        index.search(queries[:5], k)  # warm up
        times, found = time_searches(index, timed, k)
        if truth is None:
            truth = found  # Flat is exact
        e2e = []
        for i, q in enumerate(timed[: args.e2e_queries]):
            start = time.perf_counter()
            tower.encode_queries([texts[i % len(texts)]])
            index.search(q[None], k)
            e2e.append(time.perf_counter() - start)
        row = {
            "products": n,
            "backend": backend,
            "index": factory,
            "params": params,
            "build_s": build_s,
            "build_products_per_s": n / build_s if build_s > 0 else float("inf"),
            "search": percentiles(times),
            "recall@10": recall_at_k(found, truth[: len(found)]),
            "end_to_end": percentiles(e2e),
        }
        for name in params if backend == "faiss" else ():
            row["sweep"] = []
            for value in sweeps[name]:
                index.set_search_params(**{**defaults, name: value})
                times, found = time_searches(index, queries, k)
                row["sweep"].append(
                    {name: value, **percentiles(times), "recall@10": recall_at_k(found, truth)}
                )
            index.set_search_params(**defaults)
        rows.append(row)
        print(format_row(row), flush=True)
        del index
        gc.collect()
    return rows


def format_row(r: dict) -> str:
    s, e = r["search"], r["end_to_end"]
    return (
        f"| {r['products']:>9,} | {r['backend']:<7} | {r['index']:<14} | {r['build_products_per_s']:>12,.0f} | "
        f"{s['p50_ms']:>7.3f} | {s['p99_ms']:>7.3f} | {s['qps']:>8,.0f} | {r['recall@10']:>6.3f} | "
        f"{e['p50_ms']:>7.2f} | {e['p99_ms']:>7.2f} |"
    )


HEADER = (
    "| products  | backend | index          | build prod/s | p50 ms  | p99 ms  | q/s      | R@10   | e2e p50 | e2e p99 |\n"
    "|----------:|---------|----------------|-------------:|--------:|--------:|---------:|-------:|--------:|--------:|"
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1k and 10k products only")
    parser.add_argument("--sizes", help="comma-separated catalog sizes (overrides --quick)")
    parser.add_argument("--dim", type=int, default=256, help="vector dim (MAKE default embed_dim)")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per index")
    parser.add_argument("--e2e-queries", type=int, default=100, help="text-in queries per index")
    parser.add_argument(
        "--rank", type=int, default=32, help="intrinsic dim of the synthetic vectors"
    )
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--nprobe", type=int, default=64)
    parser.add_argument("--checkpoint", help="time a trained MAKE query tower")
    parser.add_argument("--encoder", choices=["minilm", "hashing"], default="minilm")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and FAISS threads while timing queries (builds use all cores)",
    )
    parser.add_argument(
        "--milvus", action="store_true", help="also time Milvus Lite (FLAT, HNSW) in this process"
    )
    parser.add_argument(
        "--milvus-queries",
        type=int,
        default=50,
        help="timed queries per Milvus Lite index (each scans every row in Python)",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000])
    )

    import torch

    torch.set_num_threads(args.threads)
    tower, tower_name = load_tower(args)
    encode_times = []
    for text in QUERIES * 5:
        start = time.perf_counter()
        tower.encode_queries([text])
        encode_times.append(time.perf_counter() - start)
    encode = percentiles(encode_times[10:])
    milvus = f", milvus-lite {version('milvus-lite')}" if args.milvus else ""
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, faiss-cpu {version('faiss-cpu')}{milvus}, "
        f"{args.threads} thread(s) per query, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"machine: {machine}\nquery tower: {tower_name}: encode p50 {encode['p50_ms']:.2f} ms, "
        f"p99 {encode['p99_ms']:.2f} ms\n\n{HEADER}",
        flush=True,
    )

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="makevl-bench-") as folder:
        for n in sizes:
            rows += bench_size(n, args, tower, QUERIES, Path(folder))
            gc.collect()
    print(f"\ntotal {time.perf_counter() - started:.0f} s\n\nspeed/recall trade-off (search only):")
    for row in rows:
        for point in row.get("sweep", []):
            name, value = next(iter(point.items()))
            print(
                f"  {row['products']:>9,} {row['index']:<13} {name}={value:<4} p50 {point['p50_ms']:.3f} ms "
                f"p99 {point['p99_ms']:.3f} ms recall@10 {point['recall@10']:.3f}"
            )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"machine": machine, "query_tower": tower_name, "encode": encode, "rows": rows},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
