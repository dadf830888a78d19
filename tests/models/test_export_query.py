"""The query side as ONNX (issue #9 item 1): int8 weights in blocks, torch's vectors."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from makevl.index.runtime import OnnxQueryEncoder, QueryTokenizer
from makevl.models.export import export_query_tower, quantize_int8
from models.tiny import tiny_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

QUERIES = ["red t-shirt", "leather wallet for men", "blue", "nike running shoes size 42"]


def op_counts(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def onnx_vectors(model, path) -> np.ndarray:
    tokenizer = QueryTokenizer.of_model(model)
    return OnnxQueryEncoder(path, tokenizer).encode_queries(QUERIES)


def torch_vectors(model) -> np.ndarray:
    batch = model.query_encoder.tokenizer(
        QUERIES,
        padding=True,
        truncation=True,
        max_length=model.max_query_tokens,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model.encode_query(batch["input_ids"], batch["attention_mask"]).numpy()


@pytest.mark.parametrize("query_layers", [None, 1])
def test_the_exported_tower_gives_torchs_vectors(tmp_path, query_layers):
    model = tiny_model(query_layers=query_layers).eval()
    path = export_query_tower(model, tmp_path / "query.onnx")
    np.testing.assert_allclose(onnx_vectors(model, path), torch_vectors(model), atol=1e-4)
    # traced with eager attention, and the torch model's own attention left as it was
    assert model.query_encoder.model.config._attn_implementation != "eager"


def test_int8_stores_the_weights_in_blocks_and_stays_close(tmp_path):
    model = tiny_model().eval()
    fp32 = export_query_tower(model, tmp_path / "query.onnx")
    int8 = quantize_int8(fp32, tmp_path / "query.int8.onnx", block_size=16)
    ops = op_counts(int8)
    assert ops["MatMulNBits"] > 0 and ops["MatMul"] < op_counts(fp32)["MatMul"]
    assert int8.stat().st_size < fp32.stat().st_size
    reference, quantized = torch_vectors(model), onnx_vectors(model, int8)
    cosine = np.sum(reference * quantized, axis=1) / np.linalg.norm(quantized, axis=1)
    assert cosine.min() > 0.98  # close, yet not the float graph itself
    assert not np.allclose(quantized, reference, atol=1e-6)
