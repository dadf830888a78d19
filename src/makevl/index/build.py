"""Build a product index from a catalog stream, and update it without re-encoding.

Products are encoded in chunks as they stream in (a tqdm bar shows progress),
their display fields go to Parquet chunk by chunk, their words to the BM25
channel (:mod:`makevl.index.lexical`), and the vectors go into a
vector backend at the end (FAISS by default; see :mod:`makevl.index.backends`).
Every row that is not indexed is reported with its reason.

Under ``torchrun`` each process encodes its share of the catalog and rank 0
writes the one index (see :mod:`makevl.index.sharding`).

Updates (:func:`update_index`) encode only the new products and hand the
backend the ids to delete and the vectors to add. Either way the result is
written as a new version and swapped in atomically (see :mod:`makevl.index.store`).
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from makevl.data.catalog import Product, RowError
from makevl.index.backends import DEFAULT_BACKEND, create_backend
from makevl.index.encoders import Encoder, encoder_from_manifest, model_folder, store_model
from makevl.index.lexical import LEXICAL_FILES, LexicalIndex, product_text
from makevl.index.sharding import (
    gather_to_rank0,
    pack_share,
    process_share,
    to_rank_gpu,
    unpack_shares,
)
from makevl.index.store import (
    FORMAT_VERSION,
    PRODUCT_SCHEMA,
    PRODUCTS_FILE,
    IndexStoreError,
    ModelMismatchError,
    check_model,
    check_replaceable,
    load_stored,
    new_version,
    write_version,
    writer_lock,
)

log = logging.getLogger(__name__)

# The product columns a vector backend may store beside the vectors (see VectorBackend.upsert).
BACKEND_FIELDS = ["id", "attributes", "modality_weights"]
PRODUCT_RUNTIMES = ("onnx", "torch")  # how build_index runs a MAKE model's product side


@dataclass
class BuildReport:
    index_dir: Path
    count: int = 0  # products in the index afterwards
    added: int = 0
    removed: int = 0
    index_type: str = ""
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # rows not indexed, each with its reason
    warnings: list[str] = field(default_factory=list)  # indexed, but with a problem worked around

    def summary(self) -> str:
        rate = self.added / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.index_dir}: {self.count} products ({self.index_type}); added {self.added}, "
            + f"removed {self.removed}, skipped {len(self.skipped)}, warnings "
            + f"{len(self.warnings)} in {self.seconds:.1f} s ({rate:.0f} products/s)"
        ]
        for label, messages in (("skipped", self.skipped), ("warning", self.warnings)):
            lines += [f"  {label}: {message}" for message in messages[:10]]
            if len(messages) > 10:
                lines.append(f"  ... and {len(messages) - 10} more {label}")
        return "\n".join(lines)


def product_table(
    products: list[Product], modality_weights: np.ndarray, vector_ids: np.ndarray
) -> pa.Table:
    """The display rows of encoded products (see :data:`PRODUCT_SCHEMA`)."""
    weights = pa.array(np.asarray(modality_weights, dtype=np.float32).reshape(-1))
    columns = {
        "vector_id": vector_ids.astype(np.int64),
        "id": [p.id for p in products],
        "title": [p.title for p in products],
        "image_path": [p.image if isinstance(p.image, str) else None for p in products],
        "image_bytes": [bytes(p.image) if isinstance(p.image, bytes) else None for p in products],
        "image_embedded": [isinstance(p.image, bytes) for p in products],
        "attributes": [json.dumps(p.attributes, ensure_ascii=False) for p in products],
        "modality_weights": pa.FixedSizeListArray.from_arrays(weights, 3),
    }
    return pa.table(columns, schema=PRODUCT_SCHEMA)


def catalog_folders(products: list[Product]) -> set[str]:
    """The folders of the catalogs these products' image files belong to.

    Recorded in the manifest as ``image_roots``: the server serves no image file outside them.
    """
    return {
        str(Path(p.source).resolve().parent)
        for p in products
        if isinstance(p.image, str) and p.source
    }


def _encode_chunk(
    chunk: list[Product], encoder: Encoder, batch_size: int, report: BuildReport
) -> tuple[list[Product], np.ndarray, np.ndarray]:
    problems: dict[str, str] = {}

    def on_error(product: Product, exc: Exception) -> None:
        problems[product.id] = f"{product.where}: product {product.id!r}: {exc}"

    vectors, weights, ids = encoder.encode_products(chunk, batch_size=batch_size, on_error=on_error)
    vectors = np.asarray(vectors, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32).reshape(len(ids), 3)
    by_id = {p.id: p for p in chunk}
    returned = set(ids)
    for product in chunk:  # the encoder left these out
        if product.id not in returned:
            reason = f"{product.where}: product {product.id!r} not encoded"
            report.skipped.append(problems.get(product.id, reason))
    finite = np.isfinite(vectors).all(axis=1) & np.isfinite(weights).all(axis=1)
    for row in np.flatnonzero(~finite):
        product = by_id[ids[row]]
        report.skipped.append(f"{product.where}: product {product.id!r} got a non-finite vector")
    products = [by_id[ids[row]] for row in np.flatnonzero(finite)]
    for product in products:  # indexed, but the encoder had to work around something
        if product.id in problems:
            report.warnings.append(problems[product.id])
    return products, vectors[finite], weights[finite]


def encode_stream(
    items: Iterable[Product | RowError],
    encoder: Encoder,
    report: BuildReport,
    chunk_size: int = 1024,
    batch_size: int = 64,
    share: tuple[int, int] = (0, 1),
) -> Iterator[tuple[list[Product], np.ndarray, np.ndarray, np.ndarray, int]]:
    """Encode a catalog stream chunk by chunk: ``(products, vectors, modality_weights,
    positions, rows)``, ``positions`` being each product's place among the products kept.

    Unreadable rows, repeated ids (the first is kept) and products the encoder
    rejects go to ``report.skipped``; products indexed despite a problem the
    encoder worked around (e.g. an unusable image) to ``report.warnings``.
    With ``share=(rank, world)`` only the products at positions ``rank`` mod
    ``world`` are encoded (see :mod:`makevl.index.sharding`).
    """
    rank, world = share
    seen: set[str] = set()
    chunk: list[Product] = []
    positions: list[int] = []
    read = 0

    def encoded() -> tuple[list[Product], np.ndarray, np.ndarray, np.ndarray, int]:
        products, vectors, weights = _encode_chunk(chunk, encoder, batch_size, report)
        position_of = dict(zip((p.id for p in chunk), positions))
        kept = np.array([position_of[p.id] for p in products], dtype=np.int64)
        return products, vectors, weights, kept, read

    for item in items:
        read += 1
        if isinstance(item, RowError):
            report.skipped.append(str(item))
        elif item.id in seen:
            report.skipped.append(
                f"{item.where}: duplicate product id {item.id!r}; the first is kept"
            )
        else:
            if len(seen) % world == rank:
                chunk.append(item)
                positions.append(len(seen))
            seen.add(item.id)
        if len(chunk) >= chunk_size:
            yield encoded()
            chunk, positions, read = [], [], 0
    if chunk or read:
        yield encoded()


def _no_products(skipped: list[str]) -> IndexStoreError:
    reasons = "; ".join(skipped[:3]) or "the catalog is empty"
    return IndexStoreError(f"no product could be indexed ({len(skipped)} rows skipped: {reasons})")


def build_index(
    catalog: Iterable[Product | RowError],
    index_dir: str | Path,
    encoder: Encoder,
    *,
    encoder_spec: dict[str, Any],
    model_hash: str,
    config: dict[str, Any] | None = None,
    columns: dict[str, Any] | None = None,
    backend_name: str = DEFAULT_BACKEND,
    chunk_size: int = 1024,
    batch_size: int = 64,
    total: int | None = None,
    progress: bool = True,
    product_runtime: str = "onnx",
    image_workers: int = 1,
    **backend_options: Any,
) -> BuildReport:
    """Encode a catalog and write a new index at ``index_dir`` (replacing one there atomically).

    ``config`` (the model's run config) and ``columns`` (the catalog column
    mapping, reused by later updates) are recorded in the manifest;
    ``backend_options`` go to the vector backend (FAISS: ``factory``,
    ``exact_threshold``; Milvus: ``uri``, ``collection_prefix``, ...).
    With ``product_runtime="onnx"`` a MAKE model's product side is compiled
    for ONNX Runtime and used if it passes the parity gate
    (:mod:`makevl.index.product_runtime`); ``"torch"`` encodes in torch.
    ``image_workers`` processes decode a MAKE model's product images.
    Under ``torchrun`` every rank encodes its share of the catalog in torch and
    rank 0 writes the index (:mod:`makevl.index.sharding`); the other ranks
    return an empty report.
    """
    if product_runtime not in PRODUCT_RUNTIMES:
        raise ValueError(
            f"unknown product runtime {product_runtime!r}; expected {PRODUCT_RUNTIMES}"
        )
    start = time.perf_counter()
    index_dir = Path(index_dir)
    report = BuildReport(index_dir)
    check_replaceable(index_dir)
    rank, world = process_share()
    bar = tqdm(total=total, unit="product", desc="encoding", disable=not progress or rank > 0)
    product_runtimes: dict[str, Any] = {}
    if world > 1:
        chunks = _encoded_chunks(catalog, encoder, report, chunk_size, batch_size, (rank, world))
        to_rank_gpu(encoder)
        with bar:
            payloads = gather_to_rank0(_packed_share(chunks, bar, report))
        if payloads is None:
            return report
        chunks, bar = iter([_unpacked_shares(payloads, report)]), tqdm(disable=True)
    with writer_lock(index_dir):
        version = new_version(index_dir)
        writer, backend, parts, next_id = None, None, [], 0
        lexical_parts: list[LexicalIndex] = []
        image_roots: set[str] = set()
        try:
            if world == 1:
                catalog, encoder, product_runtimes = _product_encoder(
                    catalog, encoder, version, product_runtime, image_workers
                )
                chunks = _encoded_chunks(catalog, encoder, report, chunk_size, batch_size)
            with bar:
                for chunk in chunks:
                    bar.update(chunk.rows_read)
                    if not chunk.table.num_rows:
                        continue
                    if writer is None:  # fail on bad backend options before encoding it all
                        dim = chunk.vectors.shape[1]
                        backend = create_backend(backend_name, dim, version, **backend_options)
                        writer = pq.ParquetWriter(version / PRODUCTS_FILE, PRODUCT_SCHEMA)
                    ids = np.arange(next_id, next_id + chunk.table.num_rows, dtype=np.int64)
                    next_id += chunk.table.num_rows
                    table = chunk.table.set_column(0, "vector_id", pa.array(ids))
                    writer.write_table(table, row_group_size=1024)
                    parts.append(chunk.vectors)
                    lexical_parts.append(LexicalIndex.from_texts(chunk.texts, ids))
                    image_roots |= chunk.image_roots
            if writer is None:
                raise _no_products(report.skipped)
            writer.close()
            # One upsert of everything: an ANN index is trained on the whole catalog.
            fields = pq.read_table(version / PRODUCTS_FILE, columns=BACKEND_FIELDS)
            backend.upsert(np.arange(next_id, dtype=np.int64), np.concatenate(parts), fields)
            if encoder_spec.get("type") == "checkpoint":  # the index keeps its own copy
                encoder_spec = store_model(encoder_spec["path"], version, model_hash)
            now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            manifest = {
                "format": FORMAT_VERSION,
                "model_hash": model_hash,
                "encoder": encoder_spec,
                "config": config,
                "columns": columns,
                "next_id": next_id,
                "metric": "inner_product",
                "image_roots": sorted(image_roots),
                "product_runtimes": product_runtimes,
                "created": now,
                "updated": now,
            }
            lexical_files = LexicalIndex.concatenate(lexical_parts).save(version)
            write_version(index_dir, version, manifest, backend, other_files=lexical_files)
        except BaseException:
            if writer is not None:
                writer.close()
            shutil.rmtree(version, ignore_errors=True)
            raise
    report.count = report.added = backend.count
    report.index_type = backend.index_type
    report.seconds = time.perf_counter() - start
    return report


def _product_encoder(
    catalog: Iterable[Product | RowError],
    encoder: Encoder,
    version: Path,
    runtime: str,
    image_workers: int,
) -> tuple[Iterable[Product | RowError], Encoder, dict[str, Any]]:
    """``(catalog, encoder, product_runtimes)``: the encoder to build with (for a MAKE model,
    its compiled product side if it passes parity on the first products, else torch; any
    other encoder as given) and the manifest entry of its runtime; ``catalog`` is the same
    stream, its first items read ahead."""
    if getattr(encoder, "model", None) is None:  # not a MAKE model (and no torch import)
        return catalog, encoder, {}
    from makevl.index.product_runtime import (
        PARITY_PRODUCTS,
        PRODUCT_RUNTIME,
        compile_product_encoder,
    )
    from makevl.index.runtime import onnx_available
    from makevl.models.inference import MakeEncoder

    if type(encoder) is not MakeEncoder:  # e.g. one already compiled
        return catalog, encoder, {}
    torch_encoder = MakeEncoder(encoder.model, encoder.keywords, image_workers)
    if runtime == "torch":
        return catalog, torch_encoder, {}
    if not onnx_available():
        log.warning("onnxruntime is not installed; the catalog is encoded in torch")
        return catalog, torch_encoder, {}
    catalog = iter(catalog)
    ahead = list(itertools.islice(catalog, PARITY_PRODUCTS))
    sample = [item for item in ahead if isinstance(item, Product)]
    catalog = itertools.chain(ahead, catalog)
    if not sample:
        return catalog, torch_encoder, {}
    fast, entry = compile_product_encoder(encoder, version, sample, image_workers)
    if entry is None:
        return catalog, torch_encoder, {}
    return catalog, fast, {PRODUCT_RUNTIME: entry}


@dataclass
class _Encoded:
    """Encoded products: display rows (``vector_id`` holds each product's position in
    the catalog until the index numbers them), vectors, BM25 texts, image folders."""

    table: pa.Table
    vectors: np.ndarray
    texts: list[str]
    image_roots: set[str]
    rows_read: int


def _encoded_chunks(
    catalog: Iterable[Product | RowError],
    encoder: Encoder,
    report: BuildReport,
    chunk_size: int,
    batch_size: int,
    share: tuple[int, int] = (0, 1),
) -> Iterator[_Encoded]:
    for products, vectors, weights, positions, read in encode_stream(
        catalog, encoder, report, chunk_size, batch_size, share
    ):
        yield _Encoded(
            product_table(products, weights, positions),
            vectors,
            [product_text(p) for p in products],
            catalog_folders(products),
            read,
        )


def _packed_share(chunks: Iterator[_Encoded], bar: tqdm, report: BuildReport) -> bytes:
    """This rank's encoded products, packed for :func:`gather_to_rank0`."""
    tables, parts, texts, image_roots = [], [], [], set()
    for chunk in chunks:
        bar.update(chunk.rows_read)
        tables.append(chunk.table)
        parts.append(chunk.vectors)
        texts += chunk.texts
        image_roots |= chunk.image_roots
    table = pa.concat_tables(tables) if tables else PRODUCT_SCHEMA.empty_table()
    nonempty = [v for v in parts if len(v)]
    vectors = np.concatenate(nonempty) if nonempty else np.zeros((0, 0), np.float32)
    notes = {"skipped": report.skipped, "warnings": report.warnings}
    return pack_share(
        table.append_column("lexical_text", pa.array(texts, pa.string())),
        vectors,
        {**notes, "image_roots": sorted(image_roots)},
    )


def _unpacked_shares(payloads: list[bytes], report: BuildReport) -> _Encoded:
    """All ranks' shares as one chunk in catalog order; their notes go to ``report``."""
    table, vectors, notes = unpack_shares(payloads)
    report.skipped, report.warnings = notes["skipped"], notes["warnings"]
    texts = table.column("lexical_text").to_pylist()
    table = table.drop_columns(["lexical_text"])
    return _Encoded(table, vectors, texts, set(notes["image_roots"]), 0)


def update_index(
    index_dir: str | Path,
    *,
    add: Iterable[Product | RowError] = (),
    delete: Iterable[str] = (),
    encoder: Encoder | None = None,
    model_hash: str | None = None,
    missing_ok: bool = False,
    chunk_size: int = 1024,
    batch_size: int = 64,
    progress: bool = True,
) -> BuildReport:
    """Add, replace (same id) and delete products, encoding only the new ones.

    Without ``encoder`` the one the manifest names is loaded (only if there is
    something to add). Deleting an id the index does not hold is an error
    unless ``missing_ok``.
    """
    start = time.perf_counter()
    index_dir = Path(index_dir)
    report = BuildReport(index_dir)
    with writer_lock(index_dir):
        stored = load_stored(index_dir, mmap=False, all_columns=True)
        manifest = dict(stored.manifest)
        table = stored.table
        old_ids = set(table.column("id").to_pylist())
        delete = list(dict.fromkeys(delete))
        unknown = [i for i in delete if i not in old_ids]
        if unknown and not missing_ok:
            shown = ", ".join(repr(i) for i in unknown[:10])
            raise IndexStoreError(
                f"{index_dir}: {len(unknown)} ids to delete are not in the index: {shown}"
            )

        version = new_version(index_dir)
        try:
            if manifest["encoder"].get("type") == "checkpoint":  # carried to the new version
                store_model(model_folder(manifest["encoder"], stored.path), version,
                            manifest["model_hash"])  # fmt: skip
                from makevl.index.product_runtime import carry_product_runtime

                carry_product_runtime(stored.path, version, manifest)
            products, vectors_new, weights_new = _encode_new(
                add, manifest, encoder, model_hash, report, chunk_size, batch_size, progress
            )
            remove = set(delete) | {p.id for p in products if p.id in old_ids}
            keep = pc.invert(
                pc.is_in(table.column("id"), value_set=pa.array(sorted(remove), pa.string()))
            )
            removed_ids = table.filter(pc.invert(keep)).column("vector_id").to_numpy()
            next_id = manifest["next_id"]
            added_ids = np.arange(next_id, next_id + len(products), dtype=np.int64)
            added = product_table(products, weights_new, added_ids)
            new_table = pa.concat_tables([table.filter(keep), added])
            backend = stored.backend
            backend.delete(removed_ids)
            backend.upsert(added_ids, vectors_new, added.select(BACKEND_FIELDS))
            lexical_files = []
            if LEXICAL_FILES[0] in manifest["files"]:  # indexes built before it have none
                lexical = LexicalIndex.concatenate(
                    [
                        LexicalIndex.load(stored.path).without(removed_ids),
                        LexicalIndex.from_products(products, added_ids),
                    ]
                )
                lexical_files = lexical.save(version)
            manifest.update(
                next_id=int(next_id + len(products)),
                image_roots=sorted(
                    set(manifest.get("image_roots", [])) | catalog_folders(products)
                ),
                updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            )
            write_version(
                index_dir, version, manifest, backend, new_table, other_files=lexical_files
            )
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
    report.count, report.index_type = backend.count, backend.index_type
    report.added = len(products)
    report.removed = len(removed_ids)
    report.seconds = time.perf_counter() - start
    return report


def _encode_new(
    items: Iterable[Product | RowError],
    manifest: dict[str, Any],
    encoder: Encoder | None,
    model_hash: str | None,
    report: BuildReport,
    chunk_size: int,
    batch_size: int,
    progress: bool,
) -> tuple[list[Product], np.ndarray, np.ndarray]:
    """Encode the products to add, with the index's own model unless ``encoder`` is given."""
    dim = manifest["dim"]
    products: list[Product] = []
    vectors, weights = [np.zeros((0, dim), np.float32)], [np.zeros((0, 3), np.float32)]
    items = iter(items)
    first = next(items, None)
    if first is None:  # nothing to add: no need to load a model
        return products, vectors[0], weights[0]
    if encoder is None:
        from makevl.index.product_runtime import load_product_encoder

        encoder, model_hash = encoder_from_manifest(manifest, report.index_dir)
        encoder = load_product_encoder(report.index_dir, manifest, encoder)
    else:
        model_hash = model_hash or getattr(encoder, "model_hash", None)
    check_model(manifest, model_hash, report.index_dir)
    with tqdm(unit="product", desc="encoding", disable=not progress) as bar:
        for chunk, chunk_vectors, chunk_weights, _positions, read in encode_stream(
            itertools.chain([first], items), encoder, report, chunk_size, batch_size
        ):
            bar.update(read)
            if chunk_vectors.shape[1] != dim:
                raise ModelMismatchError(
                    f"{report.index_dir}: index vectors have dim {dim}, the encoder gives "
                    f"{chunk_vectors.shape[1]}"
                )
            products += chunk
            vectors.append(chunk_vectors)
            weights.append(chunk_weights)
    return products, np.concatenate(vectors), np.concatenate(weights)
