"""The Milvus vector backend: the vectors live in a Milvus collection, embedded or on a cluster.

``uri`` is either a local path ending in ``.db``, which runs Milvus Lite (the
``milvus-lite`` package) inside this process, or ``http://host:19530``, a Milvus
standalone or distributed cluster; pymilvus talks to both with the same calls.
A relative path is resolved against the folder holding the index's versions
(``DIR.versions``), so all versions of an index share one Milvus Lite database
that moves with the index. ``MILVUS_TOKEN`` (``user:password`` or an API key)
is read from the environment, never stored in the manifest.

Versions: every index version has its own collection, ``<prefix>_v<stamp>``. A
build fills a new one; a loaded backend copies its collection inside Milvus on
the first change (nothing is re-encoded) and changes the copy, so readers of
the published version never see half an update. Saving a version drops the
collections of ``prefix`` that no version folder names any more: the previous
version's stays until the next update, for servers still reading it.

Besides the vector, each row holds the product id, its attributes (JSON) and its
Modal Adaptation weights, so Milvus filter expressions can use them; makevl's
own filters pass ``allowed_ids``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from makevl.index.errors import IndexFileError, IndexStoreError

DEFAULT_URI = "milvus.db"  # Milvus Lite, beside the index's versions
DEFAULT_PREFIX = "products"
DEFAULT_INDEX_TYPE = "HNSW"
DEFAULT_EXACT_THRESHOLD = 50_000  # as FAISS: exact (FLAT) below this many vectors
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "AUTOINDEX")
WEIGHT_FIELDS = ("weight_title", "weight_image", "weight_fused")  # store.MODALITIES order
BATCH = 2000  # rows per insert / delete / copy request
MAX_TEXT = 65_535  # Milvus VARCHAR limit


def resolve_uri(uri: str, folder: Path | None) -> str:
    """A server URI as it is; a local ``.db`` path made absolute beside the index's versions."""
    if "://" in uri or uri.startswith("unix:"):
        return uri
    if not uri.endswith(".db"):
        raise ValueError(
            f"Milvus URI {uri!r}: give a local Milvus Lite file ending in .db or a server "
            "address like http://host:19530"
        )
    path = Path(uri)
    if not path.is_absolute():
        path = (folder.parent if folder is not None else Path.cwd()) / path
    return str(path)


def connect(uri: str) -> Any:
    """A pymilvus client; Milvus Lite starts in this process for a ``.db`` path."""
    try:
        from pymilvus import MilvusClient
    except ImportError as exc:
        raise IndexStoreError(
            "the Milvus backend needs pymilvus and milvus-lite: pip install -e '.[milvus]'"
        ) from exc
    # pymilvus (configuring its loggers on import) warns on every query iterator Milvus
    # Lite answers; nothing a user can act on.
    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    local = uri.endswith(".db")
    if local:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    # pymilvus pings every 10 s; Milvus Lite's gRPC server allows one per 5 minutes and
    # answers more with GOAWAY (logged to stderr, then a reconnect).
    grpc_options = {"grpc.keepalive_time_ms": 360_000} if local else {}
    try:
        return MilvusClient(
            uri=uri, token=os.environ.get("MILVUS_TOKEN", ""), timeout=30, grpc_options=grpc_options
        )
    except Exception as exc:  # pymilvus raises its own exception types for every failure
        hint = (
            "Milvus Lite serves one process at a time: stop the other process using it "
            "(`makevl serve`?), or run `milvus-lite server --data-dir PATH` and use its "
            "http:// address"
            if local
            else "is the Milvus server running and reachable?"
        )
        raise IndexStoreError(f"cannot open Milvus at {uri}: {exc}; {hint}") from exc


def _new_collection_name(prefix: str) -> str:
    return f"{prefix}_v{time.strftime('%Y%m%dT%H%M%S')}_{uuid.uuid4().hex[:8]}"


def _referenced_collections(versions: Path) -> set[str]:
    """The collections named by the manifests of the index versions in ``versions``."""
    names = set()
    for manifest in versions.glob("*/manifest.json"):
        try:
            options = json.loads(manifest.read_text(encoding="utf-8")).get("backend_options", {})
        except (OSError, ValueError):
            continue
        if isinstance(options, dict) and options.get("collection"):
            names.add(options["collection"])
    return names


class MilvusBackend:
    """One Milvus collection per index version, searched by inner product.

    A new collection starts with an exact ``FLAT`` index; on save the index
    type follows the size: ``FLAT`` below ``exact_threshold`` vectors, else
    ``index_type``. ``ef_search`` / ``nprobe`` are the HNSW / IVF search settings.
    """

    name = "milvus"

    def __init__(
        self,
        dim: int,
        uri: str = DEFAULT_URI,
        collection_prefix: str = DEFAULT_PREFIX,
        index_type: str = DEFAULT_INDEX_TYPE,
        exact_threshold: int = DEFAULT_EXACT_THRESHOLD,
        collection: str | None = None,
        *,
        folder: Path | None = None,
        ef_search: int = 128,
        nprobe: int = 64,
    ) -> None:
        if index_type not in INDEX_TYPES:
            raise ValueError(f"Milvus index type {index_type!r}: expected one of {INDEX_TYPES}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", collection_prefix):
            raise ValueError(
                f"Milvus collection name {collection_prefix!r}: use letters, digits and _"
            )
        self._dim, self.uri, self.prefix = dim, uri, collection_prefix
        self.ann_type, self.exact_threshold = index_type, exact_threshold
        self.ef_search, self.nprobe = ef_search, nprobe
        self.client = connect(resolve_uri(uri, folder))
        self._indexed = ""  # the type of the collection's vector index
        self.source = collection  # the collection this was loaded from; copied before a change
        if collection is None:
            self.collection = self._create_collection()
        else:
            self.collection = collection
            self._check_collection()

    # The protocol's read-only facts

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def count(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    @property
    def index_type(self) -> str:
        return self._indexed

    @property
    def options(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "collection_prefix": self.prefix,
            "index_type": self.ann_type,
            "exact_threshold": self.exact_threshold,
            "collection": self.collection,
        }

    def _type_for(self, count: int) -> str:
        return "FLAT" if count < self.exact_threshold else self.ann_type

    # Collections

    def _create_collection(self) -> str:
        """A new collection of this prefix, FLAT-indexed and loaded: searchable at once."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("vector_id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self._dim)
        schema.add_field("product_id", DataType.VARCHAR, max_length=MAX_TEXT, nullable=True)
        schema.add_field("attributes", DataType.JSON, nullable=True)
        for field in WEIGHT_FIELDS:
            schema.add_field(field, DataType.FLOAT, nullable=True)
        name = _new_collection_name(self.prefix)
        self.client.create_collection(
            name,
            schema=schema,
            index_params=self._index_params("FLAT", 0),
            consistency_level="Strong",
        )
        self._indexed = "FLAT"
        return name

    def _index_params(self, kind: str, count: int) -> Any:
        params: dict[str, Any] = {}
        if kind == "HNSW":
            params = {"M": 32, "efConstruction": 64}
        elif kind == "IVF_FLAT":
            params = {"nlist": int(max(1, min(4096, 4 * np.sqrt(count))))}
        index_params = self.client.prepare_index_params()
        index_params.add_index("vector", index_type=kind, metric_type="IP", params=params)
        return index_params

    def _check_collection(self) -> None:
        dim = collection_dim(self.client, self.collection, self.uri)
        if dim != self._dim:
            raise IndexFileError(
                f"Milvus collection {self.collection!r} holds vectors of dim {dim}, "
                f"the index says {self._dim}; rebuild the index"
            )
        self._indexed = self.client.describe_index(self.collection, "vector")["index_type"]
        self.client.load_collection(self.collection)

    def _reindex(self) -> None:
        """Rebuild the vector index if the size calls for another type (FLAT below the threshold)."""
        count = self.count
        kind = self._type_for(count)
        if kind == self._indexed:
            return
        self.client.release_collection(self.collection)
        self.client.drop_index(self.collection, "vector")
        self.client.create_index(self.collection, self._index_params(kind, count))
        self.client.load_collection(self.collection)
        self._indexed = kind

    def _copy_on_write(self) -> None:
        """Before the first change to a loaded version, copy its collection and change the copy."""
        if self.source is None or self.collection != self.source:
            return
        source, self.collection = self.collection, self._create_collection()
        rows = self.client.query_iterator(source, batch_size=BATCH, output_fields=["*"])
        try:
            while batch := rows.next():
                self.client.insert(self.collection, list(batch))
        finally:
            rows.close()

    # Changes

    def upsert(
        self, ids: np.ndarray, vectors: np.ndarray, products: pa.Table | None = None
    ) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self._dim):
            raise ValueError(
                f"upsert needs vectors of shape ({len(ids)}, {self._dim}), got {vectors.shape}"
            )
        if products is not None and products.num_rows != len(ids):
            raise ValueError(f"upsert got {products.num_rows} product rows for {len(ids)} ids")
        self._copy_on_write()
        for start in range(0, len(ids), BATCH):
            stop = min(start + BATCH, len(ids))
            rows = [
                {"vector_id": int(i), "vector": v}
                for i, v in zip(ids[start:stop], vectors[start:stop])
            ]
            if products is not None:
                _add_product_fields(rows, products.slice(start, stop - start))
            self.client.upsert(self.collection, rows)

    def delete(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        self._copy_on_write()
        for start in range(0, len(ids), BATCH):
            self.client.delete(self.collection, ids=ids[start : start + BATCH].tolist())

    # Search

    def search(
        self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product; ``allowed_ids`` become a ``vector_id in [...]`` filter."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if not len(queries) or k <= 0 or (allowed_ids is not None and not len(allowed_ids)):
            return scores, ids
        params = {"ef": max(self.ef_search, k)} if self._indexed == "HNSW" else {}
        if self._indexed == "IVF_FLAT":
            params = {"nprobe": self.nprobe}
        expression = ""
        if allowed_ids is not None:
            allowed = np.unique(np.asarray(allowed_ids, dtype=np.int64))
            expression = f"vector_id in [{','.join(map(str, allowed.tolist()))}]"
        results = self.client.search(
            self.collection,
            data=list(queries),
            limit=k,
            filter=expression,
            anns_field="vector",
            search_params={"metric_type": "IP", "params": params},
            output_fields=[],
        )
        for row, hits in enumerate(results):
            hits = list(hits)[:k]
            ids[row, : len(hits)] = [hit["vector_id"] for hit in hits]
            scores[row, : len(hits)] = [hit["distance"] for hit in hits]
        return scores, ids

    # Versions

    def save(self, folder: Path) -> list[str]:
        """Index and flush the collection and drop superseded ones; no file goes in ``folder``."""
        self._reindex()
        self.client.flush(self.collection)
        keep = _referenced_collections(folder.parent) | {self.collection}
        pattern = re.compile(rf"{re.escape(self.prefix)}_v\d{{8}}T\d{{6}}_[0-9a-f]{{8}}")
        for name in self.client.list_collections():
            if pattern.fullmatch(name) and name not in keep:
                self.client.drop_collection(name)
        return []

    @classmethod
    def load(
        cls, folder: Path, *, mmap: bool = True, collection: str | None = None, **options: Any
    ) -> MilvusBackend:
        """Bind to the collection the manifest names (``mmap`` does not apply: Milvus holds it)."""
        if not collection:
            raise IndexFileError(f"{folder}: the manifest names no Milvus collection; rebuild")
        uri = options.get("uri", DEFAULT_URI)
        dim = collection_dim(connect(resolve_uri(uri, folder)), collection, uri)
        return cls(dim, collection=collection, folder=folder, **options)


def collection_dim(client: Any, collection: str, uri: str) -> int:
    """The vector dim of a collection of this backend's schema; a missing one is named."""
    if not client.has_collection(collection):
        raise IndexFileError(
            f"Milvus collection {collection!r} not found at {uri}; the index's vectors are gone "
            "(dropped, or the Milvus Lite database was not copied with the index): rebuild the index"
        )
    fields = client.describe_collection(collection)["fields"]
    return int(next(f["params"]["dim"] for f in fields if f["name"] == "vector"))


def _add_product_fields(rows: list[dict[str, Any]], products: pa.Table) -> None:
    """Product id, attributes and Modal Adaptation weights as scalar fields of ``rows``."""
    product_ids = products.column("id").to_pylist()
    attributes = products.column("attributes").to_pylist()
    weights = products.column("modality_weights").to_pylist()
    for row, product_id, attrs, weight in zip(rows, product_ids, attributes, weights):
        row["product_id"] = product_id
        row["attributes"] = json.loads(attrs) if attrs else None
        for field, value in zip(WEIGHT_FIELDS, weight or (None,) * len(WEIGHT_FIELDS)):
            row[field] = value
