"""Data-loading memory: streaming pair shards vs loading the whole shop, at 20k and 200k rows.

For each catalog size a synthetic Parquet catalog (images as PNG bytes in the
rows) and query log are written and cut by ``makevl data shard`` into shards
of about ``--shard-rows`` catalog rows each. Then, each in its own child
process so the peak is its own, one epoch of training samples is read (images
decoded and transformed, batches of 64):

- streaming: :class:`StreamingPairDataset` over the pair shards;
- in memory: ``load_shop`` + :class:`PairDataset`, what training does without
  ``data.train_shards``.

Peak RSS (``VmHWM``) is printed side by side with the ratio of the largest
size to the smallest.

    python benchmarks/stream_memory.py                   # 20k and 200k rows
    python benchmarks/stream_memory.py --rows 2000 20000 # quicker
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from makevl.config import DataConfig
from makevl.data.shard import ShardManifest, shard_shop
from makevl.data.shop import load_shop
from makevl.keywords import KeywordVocab, build_vocabulary
from makevl.training.data import EpochBatchSampler, PairDataset, training_pairs
from makevl.training.streaming import StreamingPairDataset

BATCH = 64


def write_shop(folder: Path, rows: int) -> None:
    """``catalog.parquet`` (id, title, image bytes, category, colour) and ``queries.parquet``."""
    colours = ["red", "blue", "green", "black", "white", "pink", "grey", "brown"]
    kinds = ["shirt", "jeans", "shoes", "bag", "watch", "dress", "jacket", "cap"]
    pictures = []
    for n, colour in enumerate(colours):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (n * 30, 255 - n * 30, 90)).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
    folder.mkdir(parents=True)
    catalog = pq.ParquetWriter(folder / "catalog.parquet", pa.schema([
        ("id", pa.string()), ("title", pa.string()), ("image", pa.binary()),
        ("category", pa.string()), ("colour", pa.string())]))  # fmt: skip
    queries = pq.ParquetWriter(folder / "queries.parquet", pa.schema([
        ("query", pa.string()), ("product_id", pa.string())]))  # fmt: skip
    for start in range(0, rows, 10_000):
        ids = range(start, min(rows, start + 10_000))
        catalog.write_table(pa.table({
            "id": [f"p{i:08d}" for i in ids],
            "title": [f"{colours[i % 8]} cotton {kinds[i // 8 % 8]} style {i % 997}" for i in ids],
            "image": [pictures[i % 8] for i in ids],
            "category": [kinds[i // 8 % 8] for i in ids],
            "colour": [colours[i % 8] for i in ids],
        }))  # fmt: skip
        queries.write_table(pa.table({
            "query": [f"{colours[i % 8]} {kinds[i // 8 % 8]} {i % 991}" for i in ids],
            "product_id": [f"p{i:08d}" for i in ids],
        }))  # fmt: skip
    catalog.close()
    queries.close()


def transform():
    return transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])


def peak_rss_mib() -> float:
    """This process's peak RSS. Not ``ru_maxrss``: a child starts with its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # KiB -> MiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def stream_epoch(folder: Path) -> int:
    """Child: one epoch of the pair shards; returns samples read."""
    shards = folder / "shards"
    vocab = KeywordVocab.load(shards / "keywords.json")
    dataset = StreamingPairDataset(ShardManifest.load(shards), vocab.index, transform(), BATCH)
    loader = DataLoader(dataset, batch_size=None, collate_fn=len)
    return sum(loader)


def memory_epoch(folder: Path) -> int:
    """Child: load the whole shop as training does today, then one epoch of it."""
    shop = load_shop(DataConfig(preset="custom", catalog=str(folder / "catalog.parquet"),
                                queries=str(folder / "queries.parquet")))  # fmt: skip
    products, records = shop.products_in("train"), shop.queries_in("train")
    vocab = build_vocabulary(products, records)
    pairs = training_pairs(products, records)
    ids = [vocab.ids_of(p.id) for p in products]
    texts = [vocab.keywords_of(p.id) for p in products]
    dataset = PairDataset(pairs, products, ids, texts, transform())
    sampler = EpochBatchSampler(len(pairs), BATCH)
    return sum(DataLoader(dataset, batch_sampler=sampler, collate_fn=len))


def run_child(mode: str, folder: str) -> None:
    """Child process: one epoch; the memory the imports took is the floor."""
    imports = peak_rss_mib()
    start = time.perf_counter()
    samples = (stream_epoch if mode == "streaming" else memory_epoch)(Path(folder))
    print(json.dumps({"samples": samples, "imports_mib": imports, "peak_rss_mib": peak_rss_mib(),
                      "seconds": time.perf_counter() - start}))  # fmt: skip


def child(mode: str, folder: Path) -> dict:
    command = [sys.executable, __file__, "--child", mode, str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} on {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--shard-rows", type=int, default=5_000,
                        help="catalog rows per pair shard")  # fmt: skip
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(*args.child)
        return

    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            folder = Path(tmp) / f"shop-{rows}"
            write_shop(folder, rows)
            shards = max(1, rows // args.shard_rows)
            start = time.perf_counter()
            manifest = shard_shop([folder / "catalog.parquet"], [folder / "queries.parquet"],
                                  folder / "shards", shards, progress=lambda _: None)  # fmt: skip
            print(
                f"{rows} rows: {manifest.rows} train pairs in {shards} shards, "
                f"sharded in {time.perf_counter() - start:.1f} s",
                flush=True,
            )
            results[rows] = {mode: child(mode, folder) for mode in ("streaming", "in memory")}
    small, large = min(results), max(results)
    print(f"\n{'catalog rows':>12} {'mode':<10} {'samples':>8} {'seconds':>8} "
          f"{'peak RSS MiB':>12} {'after imports':>13} {'data MiB':>8}")  # fmt: skip
    for rows, modes in results.items():
        for mode, r in modes.items():
            print(f"{rows:>12,} {mode:<10} {r['samples']:>8} {r['seconds']:>8.1f} "
                  f"{r['peak_rss_mib']:>12.0f} {r['imports_mib']:>13.0f} "
                  f"{r['peak_rss_mib'] - r['imports_mib']:>8.0f}")  # fmt: skip
    for mode in ("streaming", "in memory"):
        ratio = results[large][mode]["peak_rss_mib"] / results[small][mode]["peak_rss_mib"]
        print(f"{mode}: peak RSS at {large:,} rows / at {small:,} rows = {ratio:.2f}x")


if __name__ == "__main__":
    main()
