"""Query latency, text in -> top-10 out, from 10k to 1M products, per query runtime.

For each catalog size: synthetic product vectors (unit vectors near a random
32-dim subspace: neither uniform noise nor clean clusters; see embedding_like),
indexed exactly (Flat, the ground truth) and with HNSW32 (efSearch 128; 256 at
1M) through makevl's own FAISS vector backend, plus an efSearch sweep.
Reported per index: build products/s, search-only p50/p99 for one query at a
time (as the server runs them), ANN recall@10 against exact, and end to end
p50/p99 for each query runtime side by side: the query tower encodes the text,
then the index is searched (with a synthetic query vector from the product
distribution, so recall stays meaningful).

The query tower is MAKE's whole query side (MiniLM-L6 text tower, projection,
keyword memory): ``--checkpoint`` (a trained one), else built untrained from
the bundled ``demo-pretrained`` config (the same cost). It runs in torch, and
exported to ONNX (fp32, and int8: dynamic per-channel quantization of every
weight layer) as ``makevl export`` does; each ONNX runtime's parity with torch
(cosine; top-10 overlap on the exact index of each size) is checked against
the gate of ``makevl export``.

``--index DIR`` (an index built from a checkpoint, ``makevl export``-ed) adds
the per-query overhead of ``Searcher.search`` around the tower: its p50 beside
the tower alone plus the vector search alone, for each runtime the index has.

    python benchmarks/search_latency.py --checkpoint runs/fm/last --index runs/fm/index
    python benchmarks/search_latency.py --sizes 10000,100000     # fewer sizes
    python benchmarks/search_latency.py --sizes 10000,100000 --milvus --encoder hashing
        # Milvus Lite (exact FLAT and HNSW) beside FAISS, model-free encoder
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


def parity_queries(limit: int) -> list[str]:
    """fashion-mini's generated queries when the dataset is on disk, else the sample queries."""
    from makevl.data.fashion_mini import build_query_specs, load_fashion_mini
    from makevl.data.presets import fashion_mini_dir

    styles = fashion_mini_dir() / "styles.csv"
    if not styles.is_file():
        return list(QUERIES)
    products, _, _ = load_fashion_mini(styles)
    return [spec.text for spec in build_query_specs(products, max_queries=limit)][:limit]


def load_runtimes(args: argparse.Namespace, folder: Path) -> tuple[dict, str]:
    """``{runtime name: query encoder}`` and a description of the tower."""
    if args.encoder == "hashing":
        from makevl.index.encoders import HashingEncoder

        return {"hashing": HashingEncoder(args.dim)}, "hashing bag of words (no model)"
    import torch

    from makevl.index.runtime import OnnxQueryEncoder, QueryTokenizer
    from makevl.models.export import export_query_tower, quantize_int8
    from makevl.models.inference import MakeEncoder

    if args.checkpoint:
        from makevl.models.checkpoint import load_checkpoint

        model, name = load_checkpoint(args.checkpoint)[0], f"checkpoint {args.checkpoint}"
    else:
        from makevl.config import resolve_config
        from makevl.models.make import MakeModel

        cfg = resolve_config("demo-pretrained", [f"model.embed_dim={args.dim}"])
        torch.manual_seed(0)
        model = MakeModel.from_config(cfg, num_keywords=args.keywords).eval()
        name = f"untrained demo-pretrained ({cfg.model.text_backbone} text tower)"
    tokenizer = QueryTokenizer.of_model(model)
    fp32 = export_query_tower(model, folder / "query_tower.onnx")
    int8 = quantize_int8(fp32, folder / "query_tower.int8.onnx")
    return {
        "torch": MakeEncoder(model),
        "onnx-fp32": OnnxQueryEncoder(fp32, tokenizer, args.threads),
        "onnx-int8": OnnxQueryEncoder(int8, tokenizer, args.threads),
    }, name


def time_each(call, items) -> tuple[list[float], list]:
    times, out = [], []
    for item in items:
        start = time.perf_counter()
        out.append(call(item))
        times.append(time.perf_counter() - start)
    return times, out


def time_searches(index, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    times, found = time_each(lambda q: index.search(q[None], k)[1][0], queries)
    return times, np.array(found)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def build_backend(name: str, index_type: str, vectors: np.ndarray, folder: Path, params: dict):
    """An index of ``vectors`` through makevl's backend seam, as `makevl index build` makes it."""
    dim = vectors.shape[1]
    if name == "faiss":
        index = create_backend("faiss", dim, factory=index_type, exact_threshold=0, **params)
    else:  # Milvus Lite in this process, one database per index
        version_dir = folder / f"{index_type}-{len(vectors)}" / "version"
        version_dir.mkdir(parents=True)
        index = create_backend(
            "milvus", dim, version_dir, index_type=index_type, exact_threshold=0, **params
        )
    index.upsert(np.arange(len(vectors), dtype=np.int64), vectors)
    if name == "milvus":
        index.save(version_dir)  # builds the Milvus index of its type and flushes
    return index


def runtime_parity(runtimes: dict, texts: list[str], index, k: int) -> dict[str, dict]:
    """The parity gate of each ONNX runtime against torch, on this size's exact index."""
    from makevl.index.runtime import PARITY_GATES, measure_parity

    if "torch" not in runtimes:
        return {}
    reference = runtimes["torch"].encode_queries(texts)
    out = {}
    for name, runtime in runtimes.items():
        if name in PARITY_GATES:
            parity = measure_parity(reference, runtime.encode_queries(texts), index.search, k)
            out[name] = {**parity.__dict__, "passes": parity.passes(PARITY_GATES[name])}
    return out


def end_to_end(tower, index, texts: list[str], queries: np.ndarray, k: int) -> dict[str, float]:
    """Text in, top-k out: encode one query, search the index with one query vector."""
    times = []
    for i, vector in enumerate(queries):
        start = time.perf_counter()
        tower.encode_queries([texts[i % len(texts)]])
        index.search(vector[None], k)
        times.append(time.perf_counter() - start)
    return percentiles(times)


def bench_size(n: int, args, runtimes: dict, texts: list[str], folder: Path) -> list[dict]:
    dim, k = args.dim, 10
    basis = np.random.default_rng(1).standard_normal((args.rank, dim)).astype(np.float32)
    vectors = embedding_like(n, dim, basis, seed=2)
    queries = embedding_like(args.queries, dim, basis, seed=3)
    ef_search = args.ef_search_1m if n >= 1_000_000 else args.ef_search
    plans = [("faiss", "Flat", {}), ("faiss", "HNSW32", {"ef_search": ef_search})]
    if args.milvus:
        plans += [("milvus", "FLAT", {}), ("milvus", "HNSW", {"ef_search": ef_search})]

    rows, truth = [], None
    for backend, factory, params in plans:
        faiss_backend.set_threads(os.cpu_count() or 1)  # builds use every core
        start = time.perf_counter()
        index = build_backend(backend, factory, vectors, folder, params)
        build_s = time.perf_counter() - start
        faiss_backend.set_threads(1)  # see single_query_threads
        timed = queries if backend == "faiss" else queries[: args.milvus_queries]
        index.search(queries[:5], k)  # warm up
        times, found = time_searches(index, timed, k)
        row = {
            "products": n,
            "backend": backend,
            "index": factory,
            "params": params,
            "build_products_per_s": n / build_s if build_s > 0 else float("inf"),
            "search": percentiles(times),
        }
        if truth is None:
            truth = found  # Flat is exact
            row["parity"] = runtime_parity(runtimes, texts, index, k)
        row["recall@10"] = recall_at_k(found, truth[: len(found)])
        row["end_to_end"] = {
            name: end_to_end(tower, index, texts, timed[: args.e2e_queries], k)
            for name, tower in runtimes.items()
        }
        if backend == "faiss" and "ef_search" in params:
            row["sweep"] = []
            for value in (32, 64, 128, 192, 256):
                index.set_search_params(ef_search=value, nprobe=index.nprobe)
                times, found = time_searches(index, queries, k)
                recall = recall_at_k(found, truth)
                row["sweep"].append({"ef_search": value, **percentiles(times), "recall@10": recall})
            index.set_search_params(ef_search=params["ef_search"], nprobe=index.nprobe)
        rows.append(row)
        print(format_row(row, list(runtimes)), flush=True)
        del index
        gc.collect()
    return rows


def single_query_threads(tower_threads: int) -> None:
    """Threads for timing one query at a time: ``tower_threads`` for the query tower, one
    for the vector search. FAISS parallelizes over queries, so a single query gains
    nothing from more, and its idle OpenMP threads would spin against the tower's
    (measured: ONNX fp32 + HNSW at 100k, 9.4 ms p50 with 2 FAISS threads, against
    the tower's 3.6 ms alone)."""
    import torch

    torch.set_num_threads(tower_threads)
    faiss_backend.set_threads(1)


def searcher_overhead(
    index_dir: str, texts: list[str], count: int, threads: int, k: int = 10
) -> dict:
    """Per runtime the index has: p50 of ``Searcher.search`` (one query, text in -> top-k
    hits out), of its query tower alone and of its vector search alone, interleaved."""
    from makevl.index.runtime import RUNTIME_FILES, TORCH
    from makevl.index.search import Searcher
    from makevl.index.store import read_manifest

    recorded = read_manifest(index_dir).get("runtimes", {})
    out = {}
    for name in [TORCH, *(r for r in reversed(RUNTIME_FILES) if r in recorded)]:
        searcher = Searcher(index_dir, runtime=name, query_threads=threads)
        searcher.search(texts[:3], k)  # warm up
        end_to_end, tower, search = [], [], []
        for i in range(count):
            text = [texts[i % len(texts)]]
            start = time.perf_counter()
            searcher.search(text, k)
            middle = time.perf_counter()
            vector = searcher.query_encoder.encode_queries(text)
            encoded = time.perf_counter()
            searcher.backend.search(np.ascontiguousarray(vector, dtype=np.float32), k, None)
            end = time.perf_counter()
            end_to_end.append(middle - start)
            tower.append(encoded - middle)
            search.append(end - encoded)
        p50 = {
            part: float(np.percentile(times, 50) * 1000)
            for part, times in (("searcher", end_to_end), ("tower", tower), ("search", search))
        }
        p50["overhead"] = p50["searcher"] - p50["tower"] - p50["search"]
        out[name] = p50
        del searcher
        gc.collect()
    return out


def format_row(r: dict, names: list[str]) -> str:
    s, e = r["search"], r["end_to_end"]
    label = f"{r['backend']} {r['index']}" + "".join(
        f" {k.replace('_search', 'S')}={v}" for k, v in r["params"].items()
    )
    cells = " | ".join(f"{e[n]['p50_ms']:>7.2f} / {e[n]['p99_ms']:>7.2f}" for n in names)
    return (
        f"| {r['products']:>9,} | {label:<24} | {r['build_products_per_s']:>10,.0f} | "
        f"{s['p50_ms']:>7.3f} | {s['p99_ms']:>7.3f} | {r['recall@10']:>5.3f} | {cells} |"
    )


def header(names: list[str]) -> str:
    cells = " | ".join(f"{n + ' p50/p99 ms':<17}" for n in names)
    rule = "|".join(["-" * 19] * len(names))
    return (
        "| products  | index                    | build p/s  | srch p50| srch p99| R@10  | "
        f"{cells} |\n"
        "|----------:|--------------------------|-----------:|--------:|--------:|------:|"
        f"{rule}|"
    )


def fastest_passing(rows: list[dict]) -> list[str]:
    """Per size: the HNSW index's end-to-end p50 with the fastest runtime that passes parity."""
    lines, parity = [], {}
    for row in rows:
        parity = row.get("parity", parity)
        if row["index"] != "HNSW32":
            continue
        passing = [n for n in row["end_to_end"] if n not in parity or parity[n]["passes"]]
        best = min(passing, key=lambda name: row["end_to_end"][name]["p50_ms"])
        e2e = row["end_to_end"][best]
        lines.append(
            f"  {row['products']:>9,} HNSW32 efSearch={row['params']['ef_search']}: fastest "
            f"runtime that passes parity: {best}: p50 {e2e['p50_ms']:.2f} ms, p99 "
            f"{e2e['p99_ms']:.2f} ms (recall@10 {row['recall@10']:.3f})"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="10000,100000,1000000", help="comma-separated catalog sizes"
    )
    parser.add_argument("--dim", type=int, default=256, help="vector dim (MAKE default embed_dim)")
    parser.add_argument("--queries", type=int, default=200, help="timed searches per index")
    parser.add_argument("--e2e-queries", type=int, default=200, help="text-in queries per runtime")
    parser.add_argument("--parity-queries", type=int, default=200)
    parser.add_argument("--rank", type=int, default=32, help="intrinsic dim of the vectors")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW efSearch below 1M")
    parser.add_argument("--ef-search-1m", type=int, default=256, help="HNSW efSearch at 1M")
    parser.add_argument("--checkpoint", help="a trained MAKE query tower (default: untrained)")
    parser.add_argument("--keywords", type=int, default=1000, help="keyword memory (untrained)")
    parser.add_argument("--encoder", choices=["make", "hashing"], default="make")
    parser.add_argument("--index", help="also measure Searcher.search's overhead on this index")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="query tower threads (torch, ONNX Runtime) while timing queries; the vector "
        "search of one query runs on one thread (builds use all cores)",
    )
    parser.add_argument("--milvus", action="store_true", help="also time Milvus Lite")
    parser.add_argument(
        "--milvus-queries", type=int, default=50, help="timed queries per Milvus Lite index"
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    import torch

    single_query_threads(args.threads)
    texts = parity_queries(args.parity_queries)
    with tempfile.TemporaryDirectory(prefix="makevl-bench-") as tmp:
        runtimes, tower_name = load_runtimes(args, Path(tmp))
        encode = {
            name: percentiles(time_each(lambda t, r=r: r.encode_queries([t]), texts)[0][5:])
            for name, r in runtimes.items()
        }
        machine = (
            f"{platform.machine()}, {os.cpu_count()} CPUs, faiss-cpu {version('faiss-cpu')}, "
            f"onnxruntime {version('onnxruntime')}, torch {torch.__version__}, "
            f"{args.threads} thread(s) per query, load average at start {os.getloadavg()}"
        )
        print(f"machine: {machine}\nquery tower: {tower_name}; {len(texts)} queries")
        for name, stats in encode.items():
            print(
                f"  {name:<9} tower alone: p50 {stats['p50_ms']:.2f} ms, "
                f"p99 {stats['p99_ms']:.2f} ms"
            )
        overhead = (
            searcher_overhead(args.index, texts, args.e2e_queries, args.threads)
            if args.index
            else {}
        )
        if overhead:
            print(f"\nSearcher.search around the tower, {args.index} (p50 ms):")
        for name, p50 in overhead.items():
            print(
                f"  {name:<9} Searcher.search {p50['searcher']:.2f} = tower {p50['tower']:.2f} "
                f"+ vector search {p50['search']:.2f} + overhead {p50['overhead']:.2f}"
            )
        print(f"\n{header(list(runtimes))}", flush=True)
        started, rows = time.perf_counter(), []
        for n in sizes:
            rows += bench_size(n, args, runtimes, texts, Path(tmp))
            gc.collect()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()}")
    print("\nparity against torch (exact index of each size):")
    for row in rows:
        for name, p in row.get("parity", {}).items():
            print(
                f"  {row['products']:>9,} {name:<9} cosine min {p['min_cosine']:.4f} "
                f"top-10 overlap {p['overlap']:.3f}: {'passes' if p['passes'] else 'FAILS'}"
            )
    print("\n".join(["", *fastest_passing(rows)]))
    print("\nspeed/recall trade-off (search only):")
    for row in rows:
        for point in row.get("sweep", []):
            print(
                f"  {row['products']:>9,} HNSW32 efSearch={point['ef_search']:<4} "
                f"p50 {point['p50_ms']:.3f} ms p99 {point['p99_ms']:.3f} ms "
                f"recall@10 {point['recall@10']:.3f}"
            )
    if args.out:
        results = {"machine": machine, "query_tower": tower_name, "encode": encode}
        results |= {"searcher_overhead": overhead, "rows": rows}
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
