"""``makevl data shard``: a shop too large for memory, written once as train pair shards.

A query-log row names a product id; a training pair needs that product's title,
image and keywords. Joining billions of log rows against a catalog that does
not fit in memory is done once, up front, by hash partitioning (as a database
joins two large tables):

1. Stream the catalog files. A train product (the product-hash split of
   :func:`makevl.data.shop.split_of`, so val and test stay what they are) is
   checked (:func:`makevl.data.validate.check_product`) and goes to bucket
   ``hash(id) % N``; a val product goes to the val file; test products are left
   out. Unusable products are skipped and counted in their bucket.
2. Stream the query-log files. A positive row goes to its product's bucket, or
   to the val query file.
3. Join bucket by bucket: one bucket's products in memory (1/N of the train
   catalog), its query rows streamed past them, each distinct (query, product)
   pair written once to that bucket's Parquet pair shard.

The keyword vocabulary is mined from a seeded reservoir sample of the train
products (all of them, below ``vocab_products``) and their queries; each
product's keywords are matched against it during the join and stored in the
shard, so training needs no per-product table. The spelling corrector's word
counts come from the same sample.

The folder holds ``pairs-*.parquet``, ``val-products.parquet``,
``val-queries.parquet``, ``keywords.json``, ``spelling.json`` and ``manifest.json``: shard files,
row counts, SHA-256 and skipped rows per shard. The manifest is written last,
so a folder with one is complete.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from makevl.config import ColumnMapping
from makevl.data.catalog import (
    FORMATS,
    CatalogError,
    Product,
    QueryRecord,
    RowError,
    iter_catalog,
    iter_queries,
    iter_rows,
)
from makevl.data.shop import QuerySet, Shop, split_of
from makevl.data.validate import BAD_PRODUCT_KINDS, check_product
from makevl.files import file_sha256
from makevl.keywords import KeywordVocab, build_vocabulary
from makevl.spelling import SPELLING, build_spelling

MANIFEST = "manifest.json"
KEYWORDS = "keywords.json"
VAL_PRODUCTS = "val-products.parquet"
VAL_QUERIES = "val-queries.parquet"
FORMAT = "makevl-pair-shards/1"

_PRODUCT_FIELDS = [
    ("product_id", pa.string()),
    ("title", pa.string()),
    ("image_path", pa.string()),  # absolute path, or null
    ("image_bytes", pa.binary()),  # encoded image, or null
    ("keywords", pa.list_(pa.string())),
    ("attributes", pa.string()),  # JSON object
    ("source", pa.string()),  # catalog file and line, for error messages
    ("line", pa.int64()),
]
PRODUCT_SCHEMA = pa.schema(_PRODUCT_FIELDS)
QUERY_SCHEMA = pa.schema([("query", pa.string()), ("product_id", pa.string())])
# A pair shard row: the query, then its product. ``keywords`` are the product's
# vocabulary keywords there (in the catalog files, its own keyword list).
PAIR_SCHEMA = pa.schema([("query", pa.string()), *_PRODUCT_FIELDS])


class ShardError(ValueError):
    """A shard folder that cannot be used; the message names the file."""


def product_row(product: Product) -> dict[str, Any]:
    image = product.image
    return {
        "product_id": product.id,
        "title": product.title,
        "image_path": image if isinstance(image, str) else None,
        "image_bytes": image if isinstance(image, bytes) else None,
        "keywords": product.keywords,
        "attributes": json.dumps(product.attributes, ensure_ascii=False),
        "source": product.source,
        "line": product.line,
    }


def row_product(row: dict[str, Any]) -> Product:
    """The :class:`Product` a product or pair row describes."""
    image = row["image_bytes"] if row["image_bytes"] is not None else row["image_path"]
    return Product(row["product_id"], row["title"], image, json.loads(row["attributes"]),
                   list(row["keywords"] or []), row["source"], row["line"])  # fmt: skip


def bucket_of(product_id: str, num_buckets: int) -> int:
    """Stable across runs and machines (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(product_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_buckets


class ParquetRows:
    """Appends rows to a Parquet file a row group at a time, so memory stays bounded."""

    MAX_ROWS, MAX_BYTES = 1024, 8 << 20

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path, self.schema = path, schema
        self.writer = pq.ParquetWriter(path, schema)
        self.buffer: list[dict[str, Any]] = []
        self.buffered_bytes = 0
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        self.buffered_bytes += len(row.get("image_bytes") or b"")
        self.rows += 1
        if len(self.buffer) >= self.MAX_ROWS or self.buffered_bytes >= self.MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            self.writer.write_table(pa.Table.from_pylist(self.buffer, schema=self.schema))
            self.buffer, self.buffered_bytes = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def parquet_rows(path: Path) -> Iterator[dict[str, Any]]:
    for _, row in iter_rows(path):
        yield row


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a folder stands for its catalog-format files, sorted by name."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in FORMATS)
            if not found:
                raise CatalogError(f"{path}: no {'/'.join(sorted(FORMATS))} files in this folder")
            files += found
        else:
            files.append(path)
    return files


# -------------------------------------------------------------------------- manifest


@dataclass
class PairShard:
    file: str
    rows: int  # distinct (query, product) pairs
    products: int  # usable products in the bucket
    sha256: str
    skipped: dict[str, int] = field(default_factory=dict)  # kind -> rows left out


@dataclass
class ShardManifest:
    directory: Path
    shards: list[PairShard]
    split_seed: int
    val_fraction: float
    test_fraction: float
    attribute_names: list[str]  # the attribute columns keywords were matched on
    skipped: dict[str, int] = field(default_factory=dict)  # rows no shard owns

    @property
    def rows(self) -> int:
        return sum(shard.rows for shard in self.shards)

    def path(self, shard: int) -> Path:
        return self.directory / self.shards[shard].file

    @property
    def keywords_file(self) -> Path:
        return self.directory / KEYWORDS

    @property
    def spelling_file(self) -> Path:
        return self.directory / SPELLING

    def val_set(self) -> QuerySet:
        """The val queries and product pool set aside beside the shards."""
        products = [row_product(row) for row in parquet_rows(self.directory / VAL_PRODUCTS)]
        records = [QueryRecord(row["query"], row["product_id"])
                   for row in parquet_rows(self.directory / VAL_QUERIES)]  # fmt: skip
        shop = Shop("val", products, records, [], self.split_seed, self.val_fraction,
                    self.test_fraction)  # fmt: skip
        return shop.query_set("val")

    def save(self) -> None:
        data = {"format": FORMAT, **asdict(self), "rows": self.rows}
        del data["directory"]
        tmp = self.directory / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        tmp.replace(self.directory / MANIFEST)

    @classmethod
    def load(cls, directory: str | Path, verify: bool = False) -> ShardManifest:
        """Read ``manifest.json``; ``verify`` also checks every shard's SHA-256."""
        directory = Path(directory)
        path = directory / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, expected {FORMAT!r}")
            manifest = cls(
                directory, [PairShard(**s) for s in data["shards"]], int(data["split_seed"]),
                float(data["val_fraction"]), float(data["test_fraction"]),
                list(data["attribute_names"]), dict(data["skipped"]),
            )  # fmt: skip
        except FileNotFoundError:
            raise ShardError(
                f"{path} not found: make the shards with `makevl data shard`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ShardError(f"{path}: not a pair-shard manifest: {exc}") from exc
        for index, shard in enumerate(manifest.shards):
            file = manifest.path(index)
            if not file.is_file():
                raise ShardError(f"{path}: shard {file} is missing")
            if verify and file_sha256(file) != shard.sha256:
                raise ShardError(f"{file}: SHA-256 differs from {path}; the shard was changed")
        return manifest


# ----------------------------------------------------------------------- the command


@dataclass
class _Sample:
    """Seeded reservoir sample of train products (images dropped) for the vocabulary."""

    size: int
    rng: random.Random
    products: list[Product] = field(default_factory=list)
    seen: int = 0

    def offer(self, product: Product) -> None:
        product = replace(product, image=None)
        if len(self.products) < self.size:
            self.products.append(product)
        else:
            slot = self.rng.randrange(self.seen + 1)
            if slot < self.size:
                self.products[slot] = product
        self.seen += 1


def shard_shop(
    catalog: Iterable[str | Path],
    queries: Iterable[str | Path],
    out_dir: str | Path,
    num_shards: int,
    columns: ColumnMapping | None = None,
    encoding: str = "utf-8",
    image_root: str | Path | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_title_chars: int = 512,
    check_images: bool = False,
    vocab_products: int = 100_000,
    seed: int = 0,
    progress=print,
) -> ShardManifest:
    """Partition, check and join catalog and query-log files into ``num_shards`` pair shards."""
    if num_shards < 1:
        raise ValueError(f"--shards must be at least 1, got {num_shards}")
    catalog_files, query_files = expand_paths(catalog), expand_paths(queries)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ShardError(f"{out} is not empty: choose a new folder for the shards")
    (out / ".buckets").mkdir(parents=True)
    job = _ShardJob(out, num_shards, columns, encoding, image_root, split_seed, val_fraction,
                    test_fraction, max_title_chars, check_images, progress)  # fmt: skip
    sample = _Sample(vocab_products, random.Random(seed))
    try:
        job.partition_catalog(catalog_files, sample)
        sample_ids = {p.id for p in sample.products}
        records: list[QueryRecord] = []  # the sample's queries, to mine the vocabulary with
        for record in job.partition_queries(query_files):
            if record.product_id in sample_ids and len(records) < 20 * vocab_products:
                records.append(record)
        unique = list({p.id: p for p in sample.products}.values())  # one row per duplicated id
        attribute_names = sorted({name for p in unique for name in p.attributes})
        vocab = build_vocabulary(unique, records, attribute_names=attribute_names)
        KeywordVocab(vocab.keywords, vocab.index, {}, vocab.sources).save(out / KEYWORDS)
        build_spelling(unique, records).save(out / SPELLING)
        shards = [job.join(b, vocab, attribute_names) for b in range(num_shards)]
        shutil.rmtree(out / ".buckets")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # it was empty: leave it so for the next try
        raise
    manifest = ShardManifest(out, shards, split_seed, val_fraction, test_fraction,
                             attribute_names, dict(job.skipped))  # fmt: skip
    manifest.save()
    return manifest


@dataclass
class _ShardJob:
    """The settings of one ``shard_shop`` call and the files it has open."""

    out: Path
    num_shards: int
    columns: ColumnMapping | None
    encoding: str
    image_root: str | Path | None
    split_seed: int
    val_fraction: float
    test_fraction: float
    max_title_chars: int
    check_images: bool
    progress: Any
    skipped: Counter[str] = field(default_factory=Counter)  # rows no shard owns
    bucket_skipped: list[Counter[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bucket_skipped = [Counter() for _ in range(self.num_shards)]

    def split(self, product_id: str) -> str:
        return split_of(product_id, self.split_seed, self.val_fraction, self.test_fraction)

    def writers(self, kind: str, val_name: str, schema: pa.Schema) -> list[ParquetRows]:
        """One file per bucket, then the val file."""
        names = [f".buckets/{kind}-{b}.parquet" for b in range(self.num_shards)] + [val_name]
        return [ParquetRows(self.out / name, schema) for name in names]

    def partition_catalog(self, files: list[Path], sample: _Sample) -> None:
        """Train products to their buckets (usable ones only), val products to the val file."""
        *buckets, val = writers = self.writers("products", VAL_PRODUCTS, PRODUCT_SCHEMA)
        for path in files:
            for item in iter_catalog(path, self.columns, self.encoding, self.image_root):
                if isinstance(item, RowError):
                    self.skipped[item.kind] += 1  # no product id, so no shard owns it
                    continue
                where = self.split(item.id)
                if where == "val":
                    val.write(product_row(item))
                elif where == "train":
                    bucket = bucket_of(item.id, self.num_shards)
                    issues = check_product(item, self.max_title_chars, self.check_images)
                    bad = [i.kind for i in issues if i.kind in BAD_PRODUCT_KINDS]
                    if bad:
                        self.bucket_skipped[bucket][bad[0]] += 1
                        continue
                    buckets[bucket].write(product_row(item))
                    sample.offer(item)
            self.progress(f"read {path}")
        for writer in writers:
            writer.close()

    def partition_queries(self, files: list[Path]) -> Iterator[QueryRecord]:
        """Positive rows to their product's bucket or the val file; yields the train ones."""
        *buckets, val = writers = self.writers("queries", VAL_QUERIES, QUERY_SCHEMA)
        for path in files:
            for record in iter_queries(path, self.columns, self.encoding):
                if isinstance(record, RowError):
                    self.skipped["malformed_query_row"] += 1
                    continue
                if record.label <= 0:
                    continue
                row = {"query": record.query, "product_id": record.product_id}
                where = self.split(record.product_id)
                if where == "val":
                    val.write(row)
                elif where == "train":
                    buckets[bucket_of(record.product_id, self.num_shards)].write(row)
                    yield record
            self.progress(f"read {path}")
        for writer in writers:
            writer.close()

    def join(self, bucket: int, vocab: KeywordVocab, attribute_names: list[str]) -> PairShard:
        name = f"pairs-{bucket:05d}-of-{self.num_shards:05d}.parquet"
        skipped = self.bucket_skipped[bucket]
        rows, products = _join_bucket(
            self.out / f".buckets/products-{bucket}.parquet",
            self.out / f".buckets/queries-{bucket}.parquet",
            self.out / name, vocab, attribute_names, skipped,
        )  # fmt: skip
        problems = ", ".join(f"{k}: {n}" for k, n in skipped.items()) or "none"
        self.progress(f"{name}: {rows} pairs of {products} products; skipped {problems}")
        return PairShard(name, rows, products, file_sha256(self.out / name), dict(skipped))


def _join_bucket(
    product_file: Path,
    query_file: Path,
    out: Path,
    vocab: KeywordVocab,
    attribute_names: list[str],
    skipped: Counter[str],
) -> tuple[int, int]:
    """Write the bucket's distinct pairs; return (pairs, usable products)."""
    products: dict[str, dict[str, Any]] = {}
    for row in parquet_rows(product_file):
        if row["product_id"] in products:
            skipped["duplicate_id"] += 1  # the first row of an id wins, as in validation
            continue
        row["keywords"] = vocab.match_product(row_product(row), attribute_names)
        products[row["product_id"]] = row
    pairs = ParquetRows(out, PAIR_SCHEMA)
    seen: set[tuple[str, str]] = set()
    for row in parquet_rows(query_file):
        product = products.get(row["product_id"])
        if product is None:
            skipped["unknown_product"] += 1  # not in the catalog, or skipped as unusable
            continue
        key = (row["query"], row["product_id"])
        if key not in seen:
            seen.add(key)
            pairs.write({"query": row["query"], **product})
    pairs.close()
    return pairs.rows, len(products)
