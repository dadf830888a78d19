"""Query an index: text in, products with scores and Modal Adaptation weights out."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from makevl.index.encoders import Encoder, encoder_from_manifest, load_checkpoint_encoder
from makevl.index.store import (
    MODALITIES,
    PRODUCTS_FILE,
    IndexFileError,
    ModelMismatchError,
    check_model,
    load_stored,
)


@dataclass
class Hit:
    """One search result (or one stored product, with ``score`` 0)."""

    id: str
    score: float
    title: str
    image: str | None  # absolute catalog path, "embedded" when the index holds the bytes, or None
    modality_weights: dict[str, float]  # Modal Adaptation: weight of the title, image, fused
    attributes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Loads an index (memory-mapped where its backend can) and the model that built it.

    ``encoder`` overrides the one the manifest names; its ``model_hash``
    attribute (or ``model_hash=``) must match the index. ``checkpoint`` searches
    with another checkpoint, which must hold the same weights.
    ``ef_search`` / ``nprobe`` trade speed for recall on HNSW / IVF indexes
    (passed to the vector backend).
    """

    def __init__(
        self,
        index_dir: str | Path,
        encoder: Encoder | None = None,
        *,
        checkpoint: str | Path | None = None,
        model_hash: str | None = None,
        mmap: bool = True,
        verify: bool = True,
        ef_search: int = 128,
        nprobe: int = 64,
    ) -> None:
        self.index_dir = Path(index_dir)
        stored = load_stored(
            self.index_dir, mmap=mmap, verify=verify, ef_search=ef_search, nprobe=nprobe
        )
        self.path, self.manifest = stored.path, stored.manifest
        if encoder is None and checkpoint is not None:
            encoder, _spec, model_hash, _cfg = load_checkpoint_encoder(checkpoint)
        elif encoder is None:
            encoder, model_hash = encoder_from_manifest(self.manifest, self.path)
        else:
            model_hash = model_hash or getattr(encoder, "model_hash", None)
        check_model(self.manifest, model_hash, self.index_dir)
        self.encoder = encoder
        self.model_hash = self.manifest["model_hash"]

        self.backend = stored.backend
        table = stored.table
        self.ids: list[str] = table.column("id").to_pylist()
        self.row_of_id = {pid: row for row, pid in enumerate(self.ids)}
        vector_ids = table.column("vector_id").to_numpy()
        self.row_of_vector = np.full(int(vector_ids.max(initial=-1)) + 1, -1, dtype=np.int64)
        self.row_of_vector[vector_ids] = np.arange(len(vector_ids))
        self.titles = table.column("title").combine_chunks()
        self.image_paths = table.column("image_path").combine_chunks()
        self.embedded = table.column("image_embedded").to_numpy(zero_copy_only=False)
        self.attributes = table.column("attributes").combine_chunks()
        weights = table.column("modality_weights").combine_chunks().flatten()
        self.modality_weights = weights.to_numpy().reshape(-1, len(MODALITIES))
        # Embedded image bytes stay on disk; read one row group on request.
        self._parquet = pq.ParquetFile(self.path / PRODUCTS_FILE)
        self._parquet_lock = threading.Lock()
        self._row_group_starts = np.cumsum(
            [0]
            + [
                self._parquet.metadata.row_group(i).num_rows
                for i in range(self._parquet.num_row_groups)
            ]
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def _hit(self, row: int, score: float) -> Hit:
        path = self.image_paths[row].as_py()
        return Hit(
            id=self.ids[row],
            score=score,
            title=self.titles[row].as_py(),
            image=path if path is not None else ("embedded" if self.embedded[row] else None),
            modality_weights=dict(zip(MODALITIES, self.modality_weights[row].tolist())),
            attributes=json.loads(self.attributes[row].as_py() or "{}"),
        )

    def search(self, queries: list[str], k: int = 10) -> list[list[Hit]]:
        """Top-``k`` products for each query, best first."""
        if not queries:
            return []
        if len(self) == 0:
            return [[] for _ in queries]
        vectors = np.ascontiguousarray(self.encoder.encode_queries(list(queries)), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ModelMismatchError(
                f"{self.index_dir}: index vectors have dim {self.dim}, the query encoder gives "
                f"shape {vectors.shape}"
            )
        scores, vector_ids = self.backend.search(vectors, min(k, len(self)))
        results = []
        for score_row, id_row in zip(scores, vector_ids):
            hits = []
            for score, vid in zip(score_row, id_row):
                if vid < 0:  # ANN indexes may return fewer than k
                    continue
                hits.append(self._hit(int(self.row_of_vector[vid]), float(score)))
            results.append(hits)
        return results

    def product(self, product_id: str) -> Hit | None:
        row = self.row_of_id.get(product_id)
        return None if row is None else self._hit(row, 0.0)

    def _image_bytes(self, row: int) -> bytes | None:
        group = int(np.searchsorted(self._row_group_starts, row, side="right") - 1)
        with self._parquet_lock:
            column = self._parquet.read_row_group(group, columns=["image_bytes"]).column(0)
        return column[row - int(self._row_group_starts[group])].as_py()

    def image(self, product_id: str) -> str | bytes | None:
        """The stored image of an indexed product: its catalog path, its bytes, or None.

        Only ever looked up by product id, so no caller-supplied path is opened.
        """
        row = self.row_of_id.get(product_id)
        if row is None:
            return None
        path = self.image_paths[row].as_py()
        if path is not None:
            return path
        return self._image_bytes(row) if self.embedded[row] else None


__all__ = ["Hit", "IndexFileError", "ModelMismatchError", "Searcher"]
