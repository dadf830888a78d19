"""Compiled query towers: the query side run by ONNX Runtime, checked against torch.

``makevl export INDEX`` writes the query side of the index's model as ONNX
(fp32, and int8 with ``--quantize int8``) into a new version of the index. A
runtime is written only if it passes the parity gate against torch on a query
set: the cosine of every query vector, and how much of the top-10 over the
index itself stays the same. The manifest's ``runtimes`` entry records each
file, its SHA-256 and the parity figures; :func:`load_query_encoder` refuses a
file whose checksum differs, and the :class:`~makevl.index.search.Searcher`
serves the fastest runtime recorded, torch when none is.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from makevl.files import file_sha256
from makevl.index.errors import IndexFileError, IndexStoreError
from makevl.index.store import (
    MANIFEST,
    checked_file,
    load_stored,
    new_version,
    publish,
    writer_lock,
)

log = logging.getLogger(__name__)

# Runtime name -> file in the index version.
RUNTIME_FILES = {"onnx-int8": "query_tower.int8.onnx", "onnx-fp32": "query_tower.onnx"}
# Fastest first. One query at a time the block-wise int8 tower is 15-20% faster than
# fp32; in batches of 32 it is 35% slower (int8 MatMulNBits against fp32 GEMM: 289
# against 449 queries/s, docs/BENCHMARKS.md), so a batching server prefers fp32.
FASTEST_ONE_AT_A_TIME = ("onnx-int8", "onnx-fp32")
FASTEST_IN_BATCHES = ("onnx-fp32", "onnx-int8")
TORCH = "torch"
RUNTIMES = (*RUNTIME_FILES, TORCH)
# ``--runtime`` of ``makevl search`` and ``makevl serve`` -> the Searcher's ``runtime``
# (auto: None, the fastest runtime that passed the parity gate at export, else torch).
RUNTIME_FLAGS = {"auto": None, "torch": TORCH, "onnx": "onnx-fp32", "onnx-int8": "onnx-int8"}


@dataclass(frozen=True)
class ParityGate:
    min_cosine: float  # every query vector, ONNX vs torch
    min_overlap: float  # mean share of the torch top-10 that the runtime also returns


PARITY_GATES = {"onnx-fp32": ParityGate(0.999, 0.99), "onnx-int8": ParityGate(0.98, 0.95)}


@dataclass(frozen=True)
class Agreement:
    """What a parity check found (fields ``min_cosine`` and ``overlap`` in subclasses)."""

    def passes(self, gate: ParityGate) -> bool:
        return self.min_cosine >= gate.min_cosine and self.overlap >= gate.min_overlap


def row_cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``candidate`` with the same row of ``reference``."""
    return np.sum(reference * candidate, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    )


@dataclass(frozen=True)
class Parity(Agreement):
    queries: int
    min_cosine: float
    mean_cosine: float
    overlap: float  # mean top-k overlap

    def __str__(self) -> str:
        return (
            f"{self.queries} queries: cosine min {self.min_cosine:.4f} "
            f"(mean {self.mean_cosine:.4f}), top-10 overlap {self.overlap:.3f}"
        )


class ParityError(IndexStoreError):
    """A compiled runtime gives other results than torch; it was not written."""


def measure_parity(reference: np.ndarray, candidate: np.ndarray, search, k: int = 10) -> Parity:
    """Compare query vectors of torch (``reference``) and a runtime (``candidate``).

    ``search(vectors, k) -> (scores, ids)`` is the index searched with both.
    """
    cosine = row_cosines(reference, candidate)
    _, expected = search(np.ascontiguousarray(reference, dtype=np.float32), k)
    _, found = search(np.ascontiguousarray(candidate, dtype=np.float32), k)
    overlaps = [
        len(set(e[e >= 0]) & set(f[f >= 0])) / max(1, int((e >= 0).sum()))
        for e, f in zip(expected, found)
    ]
    return Parity(
        len(reference), float(cosine.min()), float(cosine.mean()), float(np.mean(overlaps))
    )


class QueryTokenizer:
    """The query tower's fast tokenizer called directly: numpy out, no per-call setup.

    Gives the same ids as :meth:`MakeEncoder.tokenize_queries` (spelling corrected
    where the model carries a corrector, truncated to ``max_tokens``, padded to the
    longest in the batch).
    """

    def __init__(self, hf_tokenizer, max_tokens: int, spelling=None) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.enable_padding(
            pad_id=hf_tokenizer.pad_token_id, pad_token=hf_tokenizer.pad_token
        )
        self.spelling = spelling  # a makevl.spelling.SpellingCorrector, or None

    @classmethod
    def of_model(cls, model) -> QueryTokenizer:
        """The tokenizer of a :class:`MakeModel`'s query tower, with its spelling corrector."""
        return cls(model.query_encoder.tokenizer, model.max_query_tokens, model.spelling)

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        if self.spelling is not None:
            texts = self.spelling.correct_all(texts)
        encodings = self.tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }


class OnnxQueryEncoder:
    """A query tower exported by :mod:`makevl.models.export`, run by ONNX Runtime.

    ``threads`` is ONNX Runtime's intra-op thread count (1: one query per
    request on a shared CPU, as the server runs).
    """

    def __init__(self, path: str | Path, tokenizer: QueryTokenizer, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = tokenizer

    def encode_queries(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Query vectors [N, d] float32, unit norm."""
        out = []
        for start in range(0, len(texts), batch_size):
            inputs = self.tokenizer(list(texts[start : start + batch_size]))
            out.append(self.session.run(None, inputs)[0])
        if not out:
            raise ValueError("encode_queries needs at least one text")
        return np.concatenate(out) if len(out) > 1 else out[0]


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def load_query_encoder(
    index_path: Path,
    manifest: dict[str, Any],
    torch_encoder,
    runtime: str | None = None,
    threads: int = 1,
    batched: bool = False,
):
    """The query encoder to search with: ``(encoder, runtime name)``.

    ``runtime=None`` picks the fastest runtime the manifest records, one query
    at a time or, with ``batched``, in batches (torch when none is recorded, or
    when onnxruntime is not installed); a named one must be recorded.
    A runtime file whose SHA-256 differs from the manifest's is refused.
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise ValueError(f"unknown query runtime {runtime!r}; expected one of {RUNTIMES}")
    recorded = manifest.get("runtimes", {})
    if runtime is None:
        fastest = FASTEST_IN_BATCHES if batched else FASTEST_ONE_AT_A_TIME
        usable = [name for name in fastest if name in recorded]
        if usable and not onnx_available():
            log.warning("%s: onnxruntime is not installed; queries run in torch", index_path)
            usable = []
        runtime = usable[0] if usable else TORCH
    if runtime == TORCH:
        return torch_encoder, TORCH
    if runtime not in recorded:
        raise IndexFileError(
            f"{index_path}: no {runtime} query runtime in {MANIFEST}; "
            f"run `makevl export {index_path}` first"
        )
    entry = recorded[runtime]
    path = checked_file(
        index_path / entry["file"],
        entry["sha256"],
        "refusing to run this query runtime, run `makevl export` again",
    )
    model = getattr(torch_encoder, "model", None)
    if model is None:
        raise IndexStoreError(
            f"{index_path}: the {runtime} runtime needs the MAKE model's tokenizer; the "
            f"encoder given ({type(torch_encoder).__name__}) has none"
        )
    tokenizer = QueryTokenizer.of_model(model)
    return OnnxQueryEncoder(path, tokenizer, threads), runtime


# ------------------------------------------------------------------------ export


@dataclass
class ExportReport:
    index_dir: Path
    written: dict[str, dict[str, Any]]  # runtime -> manifest entry
    refused: dict[str, str]  # runtime -> why

    def summary(self) -> str:
        lines = [f"{self.index_dir}:"]
        for name, entry in self.written.items():
            lines.append(f"  {name}: {entry['file']} written; parity {Parity(**entry['parity'])}")
        for name, why in self.refused.items():
            lines.append(f"  {name}: refused; {why}")
        return "\n".join(lines)


def parity_queries(stored_table, limit: int = 256) -> list[str]:
    """Default parity queries: up to ``limit`` product titles of the index, evenly spread."""
    titles = stored_table.column("title").to_pylist()
    step = max(1, len(titles) // limit)
    return [t for t in titles[::step][:limit] if t and t.strip()]


def export_runtimes(
    index_dir: str | Path,
    quantize: str | None = None,
    queries: list[str] | None = None,
) -> ExportReport:
    """Compile the index model's query side to ONNX and publish it as a new index version.

    fp32 always; int8 too with ``quantize="int8"``, with ever finer weight
    scales until it passes the gate.
    A runtime that fails its gate is not written (the report says why).
    ``queries`` is the parity query set (default: the index's product titles).
    """
    from makevl.index.encoders import encoder_from_manifest
    from makevl.models.export import export_query_tower

    if quantize not in (None, "int8"):
        raise ValueError(f"unknown quantization {quantize!r}; expected int8")
    index_dir = Path(index_dir)
    with writer_lock(index_dir):
        stored = load_stored(index_dir, mmap=True)
        manifest = stored.manifest
        if manifest["encoder"].get("type") != "checkpoint":
            raise IndexStoreError(
                f"{index_dir}: built with the {manifest['encoder'].get('type')!r} encoder; only "
                "an index built from a MAKE checkpoint has a query tower to export"
            )
        encoder, _hash = encoder_from_manifest(manifest, stored.path)
        queries = queries or parity_queries(stored.table)
        if not queries:
            raise IndexStoreError(f"{index_dir}: no parity queries (the index has no titles)")
        reference = encoder.encode_queries(queries)
        model = encoder.model
        tokenizer = QueryTokenizer.of_model(model)

        version = new_version(index_dir)
        try:
            written, refused = {}, {}

            def check(path: Path) -> Parity:
                onnx = OnnxQueryEncoder(path, tokenizer, threads=os.cpu_count() or 1)
                return measure_parity(
                    reference, onnx.encode_queries(queries), stored.backend.search
                )

            fp32 = version / RUNTIME_FILES["onnx-fp32"]
            export_query_tower(model, fp32)
            parity = check(fp32)
            if not parity.passes(PARITY_GATES["onnx-fp32"]):
                raise ParityError(
                    f"{index_dir}: the ONNX fp32 query tower differs from torch ({parity}; "
                    f"needs {PARITY_GATES['onnx-fp32']}); nothing written"
                )
            written["onnx-fp32"] = runtime_entry(fp32, parity)
            if quantize == "int8":
                int8 = version / RUNTIME_FILES["onnx-int8"]
                outcome = quantize_within_gate(fp32, int8, check)
                if isinstance(outcome, Parity):
                    written["onnx-int8"] = runtime_entry(int8, outcome)
                else:
                    refused["onnx-int8"] = outcome
            _publish_with_runtimes(index_dir, stored.path, version, manifest, written)
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
    return ExportReport(index_dir, written, refused)


INT8_BLOCK_SIZES = (32, 16)  # tried in this order: smaller blocks, finer scales


def quantize_within_gate(fp32: Path, int8: Path, check) -> Parity | str:
    """Quantize with ever smaller weight blocks until parity holds.

    Returns the passing parity, or why none passed (the int8 file is then removed).
    """
    from makevl.models.export import quantize_int8

    gate = PARITY_GATES["onnx-int8"]
    tried = []
    for block_size in INT8_BLOCK_SIZES:
        quantize_int8(fp32, int8, block_size)
        parity = check(int8)
        tried.append(f"weights in blocks of {block_size}: {parity}")
        if parity.passes(gate):
            log.info("int8 query tower: %s", tried[-1])
            return parity
    int8.unlink(missing_ok=True)
    return f"no int8 variant passes {gate}: " + "; ".join(tried)


def runtime_entry(path: Path, parity: Parity) -> dict[str, Any]:
    return {
        "file": path.name,
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "parity": asdict(parity),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _publish_with_runtimes(
    index_dir: Path,
    current: Path,
    version: Path,
    manifest: dict[str, Any],
    runtimes: dict[str, dict[str, Any]],
) -> None:
    """The current version's files (hard links: nothing is copied) plus the runtimes."""
    skip = {MANIFEST, *(entry["file"] for entry in manifest.get("runtimes", {}).values())}
    for path in current.rglob("*"):
        target = version / path.relative_to(current)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        elif path.name not in skip and not target.exists():
            os.link(path, target)
    manifest = {**manifest, "runtimes": runtimes}
    (version / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    publish(index_dir, version)
