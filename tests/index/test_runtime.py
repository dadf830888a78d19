"""Compiled query towers (issue #9 item 1): export, parity gate, checksums, runtime choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.index_testing import build, write_catalog
from index.test_checkpoint_index import save_tiny_checkpoint
from makevl.cli import main
from makevl.data.catalog import iter_catalog
from makevl.index import runtime as runtime_module
from makevl.index.build import build_index, update_index
from makevl.index.encoders import load_checkpoint_encoder
from makevl.index.runtime import (
    PARITY_GATES,
    ParityError,
    ParityGate,
    QueryTokenizer,
    export_runtimes,
)
from makevl.index.search import Searcher
from makevl.index.store import IndexFileError, read_manifest

QUERIES = ["red t-shirt", "leather handbag", "running shoes", "wool sweater", "a silver watch"]


@pytest.fixture(scope="module")
def checkpoint_index(tmp_path_factory):
    """An index built from a tiny untrained MAKE checkpoint (no runtime exported yet)."""
    folder = tmp_path_factory.mktemp("runtime")
    catalog = write_catalog(folder / "shop")
    checkpoint = save_tiny_checkpoint(folder / "ckpt", catalog, seed=0)
    encoder, spec, model_hash, cfg = load_checkpoint_encoder(checkpoint)
    build_index(
        iter_catalog(catalog),
        folder / "index",
        encoder,
        encoder_spec=spec,
        model_hash=model_hash,
        config=cfg,
        progress=False,
    )
    return folder / "index", catalog


@pytest.fixture
def index_dir(checkpoint_index, tmp_path):
    """A fresh copy of the checkpoint index per test (exports publish new versions)."""
    source, _catalog = checkpoint_index
    return Path(shutil.copytree(source.resolve(), tmp_path / "index"))


def top_ids(searcher: Searcher, k: int = 10) -> list[list[str]]:
    return [[hit.id for hit in hits] for hits in searcher.search(QUERIES, k=k)]


def test_searcher_uses_torch_when_no_runtime_was_exported(index_dir):
    searcher = Searcher(index_dir)
    assert searcher.runtime == "torch"
    assert searcher.query_encoder is searcher.encoder
    with pytest.raises(IndexFileError, match="no onnx-fp32 query runtime"):
        Searcher(index_dir, runtime="onnx-fp32")


def test_export_passes_parity_and_searcher_picks_onnx(index_dir):
    report = export_runtimes(index_dir, queries=QUERIES)
    entry = read_manifest(index_dir)["runtimes"]["onnx-fp32"]
    assert entry == report.written["onnx-fp32"]
    gate = PARITY_GATES["onnx-fp32"]
    assert entry["parity"]["min_cosine"] >= gate.min_cosine
    assert entry["parity"]["overlap"] >= gate.min_overlap
    assert entry["parity"]["queries"] == len(QUERIES)

    onnx = Searcher(index_dir)
    assert onnx.runtime == "onnx-fp32"
    torch_searcher = Searcher(index_dir, runtime="torch")
    np.testing.assert_allclose(
        onnx.query_encoder.encode_queries(QUERIES),
        torch_searcher.encoder.encode_queries(QUERIES),
        atol=1e-4,
    )
    assert top_ids(onnx) == top_ids(torch_searcher)


def test_tampered_onnx_file_is_refused(index_dir):
    export_runtimes(index_dir, queries=QUERIES)
    path = index_dir / read_manifest(index_dir)["runtimes"]["onnx-fp32"]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="checksum mismatch"):
        Searcher(index_dir)
    with pytest.raises(IndexFileError, match="checksum mismatch"):
        Searcher(index_dir, verify=False)  # the runtime is checked even then: it is code


def test_export_refuses_a_runtime_that_fails_parity(index_dir, monkeypatch):
    before = read_manifest(index_dir)
    monkeypatch.setitem(PARITY_GATES, "onnx-fp32", ParityGate(min_cosine=1.1, min_overlap=1.0))
    with pytest.raises(ParityError, match="differs from torch"):
        export_runtimes(index_dir, queries=QUERIES)
    assert read_manifest(index_dir) == before
    versions = index_dir.with_name(index_dir.name + ".versions")
    assert not versions.exists() or not any(p.is_dir() for p in versions.iterdir())


def test_int8_is_written_only_within_its_gate(index_dir, monkeypatch):
    report = export_runtimes(index_dir, quantize="int8", queries=QUERIES)
    runtimes = read_manifest(index_dir)["runtimes"]
    if "onnx-int8" in report.written:
        parity = runtimes["onnx-int8"]["parity"]
        assert parity["min_cosine"] >= PARITY_GATES["onnx-int8"].min_cosine
        assert parity["overlap"] >= PARITY_GATES["onnx-int8"].min_overlap
        assert Searcher(index_dir).runtime == "onnx-int8"
    else:
        assert "no int8 variant passes" in report.refused["onnx-int8"]
        assert "onnx-int8" not in runtimes

    monkeypatch.setitem(PARITY_GATES, "onnx-int8", ParityGate(min_cosine=1.1, min_overlap=1.0))
    report = export_runtimes(index_dir, quantize="int8", queries=QUERIES)
    assert "no int8 variant passes" in report.refused["onnx-int8"]
    runtimes = read_manifest(index_dir)["runtimes"]
    assert list(runtimes) == ["onnx-fp32"]
    assert not (index_dir / "query_tower.int8.onnx").exists()
    assert Searcher(index_dir).runtime == "onnx-fp32"


def test_auto_picks_int8_one_query_at_a_time_and_fp32_in_batches(index_dir, monkeypatch):
    monkeypatch.setitem(PARITY_GATES, "onnx-int8", ParityGate(min_cosine=0.0, min_overlap=0.0))
    report = export_runtimes(index_dir, quantize="int8", queries=QUERIES)
    assert set(report.written) == {"onnx-fp32", "onnx-int8"}
    assert Searcher(index_dir).runtime == "onnx-int8"
    assert Searcher(index_dir, batched=True).runtime == "onnx-fp32"
    assert Searcher(index_dir, batched=True, runtime="onnx-int8").runtime == "onnx-int8"


def test_update_keeps_the_runtime(index_dir, tmp_path):
    export_runtimes(index_dir, queries=QUERIES)
    extra = write_catalog(
        tmp_path / "more", rows=[("p99", "Purple velvet dress", (120, 20, 120), "dress")]
    )
    update_index(index_dir, add=iter_catalog(extra), progress=False)
    searcher = Searcher(index_dir)  # the carried file still matches its checksum
    assert searcher.runtime == "onnx-fp32"
    assert len(searcher) == 13
    assert top_ids(searcher) == top_ids(Searcher(index_dir, runtime="torch"))


def test_query_tokenizer_matches_the_model_tokenizer(checkpoint_index):
    encoder = Searcher(checkpoint_index[0]).encoder
    texts = ["red shoe", "x", "a long query " * 10, "Ünïcode ß 🙂"]
    expected = encoder.tokenize_queries(texts)
    fast = QueryTokenizer.of_model(encoder.model)
    got = fast(texts)
    for name in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(got[name], expected[name].numpy())


def test_export_cli(index_dir, tmp_path, catalog, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    assert main(["export", str(index_dir), "--queries", str(queries)]) == 0
    out = capsys.readouterr().out
    assert "onnx-fp32: query_tower.onnx written" in out and f"{len(QUERIES)} queries" in out

    hashing = tmp_path / "hashing-index"
    build(hashing, catalog)
    assert main(["export", str(hashing)]) == 1
    assert "only an index built from a MAKE checkpoint" in capsys.readouterr().err
    assert "runtimes" not in json.loads((hashing / "manifest.json").read_text())


def test_unknown_runtime_name_is_an_error(index_dir):
    with pytest.raises(ValueError, match="unknown query runtime 'onnx-fp16'"):
        Searcher(index_dir, runtime="onnx-fp16")


def test_onnxruntime_missing_falls_back_to_torch(index_dir, monkeypatch):
    export_runtimes(index_dir, queries=QUERIES)
    monkeypatch.setattr(runtime_module, "onnx_available", lambda: False)
    assert Searcher(index_dir).runtime == "torch"


def test_the_onnx_tokenizer_corrects_spelling_as_the_model_does(checkpoint_index):
    from makevl.spelling import SpellingCorrector

    model = Searcher(checkpoint_index[0]).encoder.model
    model.spelling = SpellingCorrector({"leather": 4, "handbag": 3, "running": 2})
    typos = ["lether handbga", "runnig shoes"]
    try:
        got = QueryTokenizer.of_model(model)(typos)
        expected = QueryTokenizer.of_model(model)(["leather handbag", "running shoes"])
        np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
        from makevl.models.inference import MakeEncoder

        torch_ids = MakeEncoder(model).tokenize_queries(typos)["input_ids"].numpy()
        np.testing.assert_array_equal(got["input_ids"], torch_ids)
    finally:
        model.spelling = None
