"""Query latency and recall of the product index from 1k to 1M products, per query runtime.

For each catalog size: synthetic product vectors (unit vectors near a random
32-dim subspace: neither uniform noise nor clean clusters; see embedding_like),
indexed exactly (Flat) and approximately (HNSW32; IVF at 100k) through
makevl's own FAISS vector backend (efSearch 128, 256 at 1M; nprobe 64), plus
a sweep of those settings. Reported per index: build products/s, search-only
p50/p99 latency and queries/s for one query at a time (as the server runs
them), ANN recall@10 against exact, and end to end "text in, top-10 out"
p50/p99 for each query runtime side by side: torch, ONNX fp32, ONNX int8
(the query tower encodes the text, then the index is searched with a
synthetic query vector from the product distribution, so recall stays
meaningful).

The query tower is MAKE's: by default built untrained from the bundled
``demo-pretrained`` config (MiniLM-L6 text tower, projection, keyword memory:
the same cost as a trained one), or ``--checkpoint``. The ONNX runtimes are
exported and checked with the parity gate of ``makevl export`` (cosine against
torch on the parity queries, top-10 overlap on the exact index of each size).

    python benchmarks/query_runtimes.py                      # 1k, 10k, 100k, 1M
    python benchmarks/query_runtimes.py --sizes 10000,100000  # fewer sizes
    python benchmarks/query_runtimes.py --quick              # 1k, 10k
    python benchmarks/query_runtimes.py --checkpoint runs/x/best
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
from search_latency import embedding_like, percentiles, recall_at_k, time_searches

from makevl.index.backends import create_backend
from makevl.index.backends import faiss as faiss_backend


def parity_queries(limit: int) -> list[str]:
    """fashion-mini's generated queries when the dataset is on disk, else the sample queries."""
    from makevl.data.fashion_mini import build_query_specs, load_fashion_mini
    from makevl.data.presets import fashion_mini_dir

    styles = fashion_mini_dir() / "styles.csv"
    if not styles.is_file():
        return list(QUERIES)
    products, _, _ = load_fashion_mini(styles)
    return [spec.text for spec in build_query_specs(products, max_queries=limit)][:limit]


def load_model(args: argparse.Namespace):
    """MAKE's model: a checkpoint, or untrained from a bundled config (the same cost)."""
    import torch

    from makevl.models.inference import MakeEncoder

    if args.checkpoint:
        from makevl.models.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint)[0]
        return MakeEncoder(model), f"checkpoint {args.checkpoint}"
    from makevl.config import resolve_config
    from makevl.models.make import MakeModel

    cfg = resolve_config(args.config, [f"model.embed_dim={args.dim}"])
    torch.manual_seed(0)
    model = MakeModel.from_config(cfg, num_keywords=args.keywords).eval()
    return MakeEncoder(model), f"untrained {args.config} ({cfg.model.text_backbone} text tower)"


def export_runtimes(encoder, folder: Path, reference: np.ndarray, queries: list[str], threads: int):
    """``{name: query encoder}`` for torch, ONNX fp32 and int8, and each one's cosine parity.

    int8 is onnxruntime's dynamic per-channel quantization of every weight layer
    (the fastest variant; ``makevl export`` may keep layers in float to pass the
    gate). It is timed whether or not it passes; the parity per size below says.
    """
    from makevl.index.runtime import OnnxQueryEncoder, QueryTokenizer
    from makevl.models.export import export_query_tower, quantize_int8

    model = encoder.model
    tokenizer = QueryTokenizer(model.query_encoder.tokenizer, model.max_query_tokens)
    fp32 = export_query_tower(model, folder / "query_tower.onnx")
    int8 = quantize_int8(fp32, folder / "query_tower.int8.onnx")
    runtimes = {"torch": encoder}
    for name, path in (("onnx-fp32", fp32), ("onnx-int8", int8)):
        runtimes[name] = OnnxQueryEncoder(path, tokenizer, threads)
    made = {}
    for name in ("onnx-fp32", "onnx-int8"):
        vectors = runtimes[name].encode_queries(queries)
        cosine = np.sum(reference * vectors, axis=1)
        made[name] = f"cosine to torch min {cosine.min():.4f}, mean {cosine.mean():.4f}"
    return runtimes, made


def runtime_parity(runtimes: dict, texts: list[str], index, k: int) -> dict[str, dict]:
    """The parity gate of each ONNX runtime against torch, on this size's exact index."""
    from makevl.index.runtime import PARITY_GATES, measure_parity

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
    for i, q in enumerate(queries):
        start = time.perf_counter()
        tower.encode_queries([texts[i % len(texts)]])
        index.search(q[None], k)
        times.append(time.perf_counter() - start)
    return percentiles(times)


def bench_size(n: int, args, runtimes: dict, texts: list[str]) -> list[dict]:
    dim, k = args.dim, 10
    basis = np.random.default_rng(1).standard_normal((args.rank, dim)).astype(np.float32)
    vectors = embedding_like(n, dim, basis, seed=2)
    queries = embedding_like(args.queries, dim, basis, seed=3)
    ids = np.arange(n, dtype=np.int64)

    plans = [("Flat", {})]
    if n < 1_000_000:
        plans.append(("HNSW32", {"ef_search": args.ef_search}))
    else:
        plans.append(("HNSW32", {"ef_search": args.ef_search_1m}))
    if n == 100_000:
        plans.append(("IVF256,Flat", {"nprobe": args.nprobe}))
    sweeps = {"ef_search": [32, 64, 128, 256], "nprobe": [16, 32, 128]}  # speed/recall

    rows, truth = [], None
    for factory, params in plans:
        defaults = {"ef_search": args.ef_search, "nprobe": args.nprobe, **params}
        faiss_backend.set_threads(os.cpu_count() or 1)  # builds use every core
        start = time.perf_counter()
        index = create_backend("faiss", dim, factory=factory, exact_threshold=0, **defaults)
        index.upsert(ids, vectors)
        build_s = time.perf_counter() - start
        faiss_backend.set_threads(args.threads)  # one query per request, as the server runs them
        index.search(queries[:5], k)  # warm up
        times, found = time_searches(index, queries, k)
        row = {
            "products": n,
            "index": factory,
            "params": params,
            "build_s": build_s,
            "build_products_per_s": n / build_s if build_s > 0 else float("inf"),
            "search": percentiles(times),
        }
        if truth is None:
            truth = found  # Flat is exact
            row["parity"] = runtime_parity(runtimes, texts, index, k)
        row["recall@10"] = recall_at_k(found, truth)
        e2e_queries = queries[: args.e2e_queries]
        row["end_to_end"] = {
            name: end_to_end(tower, index, texts, e2e_queries, k)
            for name, tower in runtimes.items()
        }
        for name in params:
            row["sweep"] = []
            for value in sweeps[name]:
                index.set_search_params(**{**defaults, name: value})
                times, found = time_searches(index, queries, k)
                row["sweep"].append(
                    {name: value, **percentiles(times), "recall@10": recall_at_k(found, truth)}
                )
            index.set_search_params(**defaults)
        rows.append(row)
        print(format_row(row, list(runtimes)), flush=True)
        del index
        gc.collect()
    return rows


def format_row(r: dict, names: list[str]) -> str:
    s, e = r["search"], r["end_to_end"]
    label = r["index"] + "".join(
        f" {k.replace('_search', 'S')}={v}" for k, v in r["params"].items()
    )
    cells = " | ".join(f"{e[n]['p50_ms']:>6.2f} / {e[n]['p99_ms']:>6.2f}" for n in names)
    return (
        f"| {r['products']:>9,} | {label:<20} | {r['build_products_per_s']:>10,.0f} | "
        f"{s['p50_ms']:>7.3f} | {s['p99_ms']:>7.3f} | {r['recall@10']:>5.3f} | {cells} |"
    )


def header(names: list[str]) -> str:
    cells = " | ".join(f"{n + ' p50/p99 ms':<17}" for n in names)
    rule = "|".join(["-" * 19] * len(names))
    return (
        "| products  | index                | build p/s  | srch p50| srch p99| R@10  | "
        f"{cells} |\n"
        "|----------:|----------------------|-----------:|--------:|--------:|------:|"
        f"{rule}|"
    )


def fastest_passing(rows: list[dict]) -> list[str]:
    """Per size: the ANN index's end-to-end p50 with the fastest runtime that passes parity."""
    lines = []
    for row in rows:
        if row["index"] == "Flat":
            parity = row["parity"]
            continue
        if not row["index"].startswith("HNSW"):
            continue
        passing = ["torch"] + [name for name, p in parity.items() if p["passes"]]
        best = min(passing, key=lambda name: row["end_to_end"][name]["p50_ms"])
        e2e = row["end_to_end"][best]
        lines.append(
            f"  {row['products']:>9,} {row['index']} {row['params']}: fastest passing runtime "
            f"{best}: p50 {e2e['p50_ms']:.2f} ms, p99 {e2e['p99_ms']:.2f} ms "
            f"(recall@10 {row['recall@10']:.3f})"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1k and 10k products only")
    parser.add_argument("--sizes", help="comma-separated catalog sizes (overrides --quick)")
    parser.add_argument("--dim", type=int, default=256, help="vector dim (MAKE default embed_dim)")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per index")
    parser.add_argument("--e2e-queries", type=int, default=200, help="text-in queries per runtime")
    parser.add_argument("--parity-queries", type=int, default=200)
    parser.add_argument(
        "--rank", type=int, default=32, help="intrinsic dim of the synthetic vectors"
    )
    parser.add_argument("--ef-search", type=int, default=128)
    parser.add_argument("--ef-search-1m", type=int, default=256, help="efSearch at 1M products")
    parser.add_argument("--nprobe", type=int, default=64)
    parser.add_argument("--checkpoint", help="time a trained MAKE query tower")
    parser.add_argument("--config", default="demo-pretrained", help="untrained model's config")
    parser.add_argument(
        "--keywords", type=int, default=1000, help="keyword memory size (untrained)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch, ONNX Runtime and FAISS threads while timing queries (builds use all cores)",
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
    encoder, tower_name = load_model(args)
    texts = parity_queries(args.parity_queries)
    with tempfile.TemporaryDirectory() as folder:
        reference = encoder.encode_queries(texts)
        runtimes, made = export_runtimes(encoder, Path(folder), reference, texts, args.threads)
        encode = {}
        for name, tower in runtimes.items():
            times = []
            for text in (QUERIES * 10)[: 10 + args.e2e_queries]:
                start = time.perf_counter()
                tower.encode_queries([text])
                times.append(time.perf_counter() - start)
            encode[name] = percentiles(times[10:])
        machine = (
            f"{platform.machine()}, {os.cpu_count()} CPUs, faiss-cpu {version('faiss-cpu')}, "
            f"onnxruntime {version('onnxruntime')}, torch {torch.__version__}, "
            f"{args.threads} thread(s) per query"
        )
        print(f"machine: {machine}\nload average at start: {os.getloadavg()}")
        print(f"query tower: {tower_name}; parity queries: {len(texts)}")
        for name, stats in encode.items():
            print(
                f"  {name:<9} encode one query: p50 {stats['p50_ms']:.2f} ms, "
                f"p99 {stats['p99_ms']:.2f} ms; {made.get(name, 'reference')}"
            )
        print(f"\n{header(list(runtimes))}", flush=True)

        started = time.perf_counter()
        rows = []
        for n in sizes:
            rows += bench_size(n, args, runtimes, texts)
            gc.collect()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average {os.getloadavg()}")
    print("\nparity against torch (exact index of each size):")
    for row in rows:
        for name, p in row.get("parity", {}).items():
            print(
                f"  {row['products']:>9,} {name:<9} cosine min {p['min_cosine']:.4f} "
                f"top-10 overlap {p['overlap']:.3f}: {'passes' if p['passes'] else 'FAILS'}"
            )
    print("\nwith the fastest runtime that passes parity:")
    print("\n".join(fastest_passing(rows)))
    print("\nspeed/recall trade-off (search only):")
    for row in rows:
        for point in row.get("sweep", []):
            name, value = next(iter(point.items()))
            print(
                f"  {row['products']:>9,} {row['index']:<13} {name}={value:<4} "
                f"p50 {point['p50_ms']:.3f} ms p99 {point['p99_ms']:.3f} ms "
                f"recall@10 {point['recall@10']:.3f}"
            )
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "query_tower": tower_name,
                    "encode": encode,
                    "runtimes": made,
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
