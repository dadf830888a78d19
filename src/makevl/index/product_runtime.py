"""The product side run by ONNX Runtime: catalog encoding at the hardware's speed.

``makevl index build`` compiles the product side of the model (its title and
image towers, :func:`~makevl.models.export.export_product_towers`; the fusion
layers and Modal Adaptation after them stay in torch) into the new index version and checks it against torch on the catalog's first
products: the cosine of every product vector, and how much of each top-10
(their own titles as queries) stays the same. It encodes the catalog with it
only when it passes the query tower's fp32 gate; otherwise, or without
onnxruntime, it encodes with torch. The manifest's ``product_runtimes`` entry
records the file, its SHA-256 and the parity figures; ``index add`` encodes
with the recorded runtime and refuses a file whose checksum differs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from makevl.data.catalog import Product
from makevl.files import file_sha256
from makevl.index.runtime import PARITY_GATES, Agreement, onnx_available, row_cosines
from makevl.index.store import checked_file
from makevl.models.inference import MakeEncoder

log = logging.getLogger(__name__)

PRODUCT_RUNTIME = "onnx-fp32"
PRODUCT_TOWER_FILE = "product_towers.onnx"
PARITY_PRODUCTS = 128  # catalog products the parity check encodes twice


@dataclass(frozen=True)
class ProductParity(Agreement):
    products: int
    min_cosine: float  # every product vector, ONNX vs torch
    mean_cosine: float
    overlap: float  # mean share of the torch top-10 the runtime's vectors also return

    def __str__(self) -> str:
        return (
            f"{self.products} products: cosine min {self.min_cosine:.5f} "
            f"(mean {self.mean_cosine:.5f}), top-10 overlap {self.overlap:.3f}"
        )


def product_parity(
    reference: np.ndarray, candidate: np.ndarray, queries: np.ndarray, k: int = 10
) -> ProductParity:
    """Compare product vectors of torch (``reference``) and a runtime (``candidate``),
    row by row and by the top-``k`` each gives for ``queries`` (exact inner product)."""
    cosine = row_cosines(reference, candidate)
    k = min(k, len(reference))
    expected = np.argsort(-(queries @ reference.T), axis=1, kind="stable")[:, :k]
    found = np.argsort(-(queries @ candidate.T), axis=1, kind="stable")[:, :k]
    overlap = np.mean([len(set(e) & set(f)) / k for e, f in zip(expected, found)])
    return ProductParity(len(reference), float(cosine.min()), float(cosine.mean()), float(overlap))


class OnnxProductEncoder(MakeEncoder):
    """A :class:`MakeEncoder` whose title and image towers run the exported ONNX graph.

    Preprocessing (tokenizer, image loading, workers) is the torch encoder's, and
    so are the fusion layers and Modal Adaptation after the towers; queries run in
    torch too (the Searcher picks the query runtime).
    ``threads``: ONNX Runtime's intra-op threads (default: every core).
    """

    def __init__(
        self,
        model,
        path: str | Path,
        keywords: list[str] | None = None,
        image_workers: int = 0,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        super().__init__(model, keywords, image_workers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads sleep between ops instead of spinning: the fusion layers run in torch
        # between batches, and a build often shares the machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]

    def _product_outputs(
        self, titles: dict[str, torch.Tensor], pixels: torch.Tensor
    ) -> dict[str, np.ndarray]:
        feeds = {
            "title_input_ids": titles["input_ids"].numpy(),
            "title_attention_mask": titles["attention_mask"].numpy(),
            "pixel_values": pixels.contiguous().numpy(),  # ONNX Runtime takes NCHW
        }
        towers = dict(zip(self.output_names, self.session.run(None, feeds)))
        model = self.model
        out = model.encode_product(
            None,
            titles["attention_mask"].to(model.device),
            **{name: torch.from_numpy(value).to(model.device) for name, value in towers.items()},
        )
        return {key: value.float().cpu().numpy() for key, value in out.items()}


def compile_product_encoder(
    encoder: MakeEncoder, folder: Path, sample: list[Product], image_workers: int = 0
) -> tuple[MakeEncoder, dict[str, Any] | None]:
    """Export the product side into ``folder`` and check it on ``sample``.

    Returns the encoder to encode the catalog with and the manifest entry of the
    runtime (``None``, and the file removed, when it fails the parity gate:
    the torch ``encoder`` is returned then).
    """
    from makevl.models.export import export_product_towers

    path = folder / PRODUCT_TOWER_FILE
    export_product_towers(encoder.model, path)
    onnx = OnnxProductEncoder(encoder.model, path, encoder.keywords, image_workers)
    sample = sample[:PARITY_PRODUCTS]
    quiet = lambda product, exc: None
    reference = encoder.encode_products(sample, on_error=quiet).vectors
    candidate = onnx.encode_products(sample, on_error=quiet).vectors
    queries = encoder.encode_queries([p.title for p in sample])
    parity = product_parity(reference, candidate, queries)
    gate = PARITY_GATES[PRODUCT_RUNTIME]
    if not parity.passes(gate):
        log.warning(
            "the ONNX product tower differs from torch (%s; needs %s); encoding with torch",
            parity,
            gate,
        )
        path.unlink()
        return encoder, None
    log.info("product tower: ONNX Runtime (parity %s)", parity)
    entry = {"file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}
    return onnx, {**entry, "parity": asdict(parity)}


def load_product_encoder(
    index_path: Path, manifest: dict[str, Any], torch_encoder, image_workers: int = 0
):
    """The encoder to add products to an index with: the recorded product runtime (its
    checksum checked) when there is one and onnxruntime is installed, else ``torch_encoder``."""
    entry = manifest.get("product_runtimes", {}).get(PRODUCT_RUNTIME)
    if entry is None or not isinstance(torch_encoder, MakeEncoder):
        return torch_encoder
    if not onnx_available():
        log.warning("%s: onnxruntime is not installed; products are encoded in torch", index_path)
        return torch_encoder
    path = checked_file(
        Path(index_path) / entry["file"],
        entry["sha256"],
        "refusing to run this product runtime, rebuild the index",
    )
    return OnnxProductEncoder(torch_encoder.model, path, torch_encoder.keywords, image_workers)


def carry_product_runtime(current: Path, version: Path, manifest: dict[str, Any]) -> None:
    """Hard-link the product runtime of the current version into ``version`` (an update
    keeps the model, so it stays valid)."""
    for entry in manifest.get("product_runtimes", {}).values():
        target = version / entry["file"]
        if not target.exists():
            os.link(Path(current).resolve() / entry["file"], target)


class ServedEncoder(OnnxProductEncoder):
    """A checkpoint as an exported index serves it: product towers and query side in ONNX
    Runtime, so that ``makevl eval --runtime`` scores what ``makevl serve`` answers with."""

    def __init__(self, encoder: MakeEncoder, query_runtime: str, folder: Path) -> None:
        from makevl.index.runtime import (
            RUNTIME_FILES,
            OnnxQueryEncoder,
            QueryTokenizer,
        )
        from makevl.models.export import (
            export_product_towers,
            export_query_tower,
            quantize_int8,
        )

        if query_runtime not in RUNTIME_FILES:
            raise ValueError(f"unknown ONNX query runtime {query_runtime!r}")
        model = encoder.model
        super().__init__(
            model, export_product_towers(model, folder / PRODUCT_TOWER_FILE), encoder.keywords
        )
        path = export_query_tower(model, folder / RUNTIME_FILES["onnx-fp32"])
        if query_runtime == "onnx-int8":  # the first variant `makevl export` tries
            path = quantize_int8(path, folder / RUNTIME_FILES["onnx-int8"])
        tokenizer = QueryTokenizer.of_model(model)
        self.query_runtime = OnnxQueryEncoder(path, tokenizer, threads=os.cpu_count() or 1)

    def encode_queries(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        return self.query_runtime.encode_queries(texts, batch_size)
