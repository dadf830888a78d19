"""The two sides of a :class:`MakeModel` as ONNX graphs, for ONNX Runtime.

Query side: token ids in, unit query out.

Everything between the tokenizer and the vector searched with is in the graph:
the query text tower, its masked-mean pooling, the projection and the keyword
memory (Keyword Enhancement). Constant folding normalises the keyword table
once, at export, instead of once per query. The text tower is traced with
plain (eager) attention: the scaled-dot-product path exports as 739 nodes for
MiniLM-L6 against 586, and runs a single query 5-20% slower. (ONNX Runtime's
transformer optimizer, which fuses these into 115 nodes, made batches of 32
12% slower for no gain on single queries, so it is not used; docs/BENCHMARKS.md.)

Product side: title token ids and pixels in, the title and image towers'
outputs out (``MakeModel.encode_title`` and ``encode_image`` as configured, any
pooled image stages included, so a change to those forwards carries over).
They are most of the cost; the fusion layers and Modal Adaptation run after
them in torch (``encode_product`` with cached tower outputs), because torch's
TorchScript exporter fixes the sequence length of ``nn.MultiheadAttention``.

:func:`quantize_int8` makes the int8 variant (weight-only, block-wise: ONNX
Runtime's MatMulNBits). Whether a file may be served is decided by the parity
check in :mod:`makevl.index.runtime`, never here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from makevl.models.make import MakeModel

QUERY_INPUTS = ("input_ids", "attention_mask")  # int64 [batch, tokens]
QUERY_OUTPUT = "query"  # float32 [batch, embed_dim], unit norm
PRODUCT_INPUTS = ("title_input_ids", "title_attention_mask", "pixel_values")
# float32, as MakeModel.encode_title / encode_image give them: [batch, tokens, width] and
# [batch, width]; they are encode_product's cached-tower inputs
PRODUCT_OUTPUTS = ("title_tokens", "title_pooled", "image_tokens", "image_pooled")
OPSET = 17


class QueryTower(nn.Module):
    """``MakeModel.encode_query`` as a module of its own, so only the query side is exported."""

    def __init__(self, model: MakeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_query(input_ids, attention_mask)


@contextmanager
def _quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs every node to the root logger."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


@contextmanager
def _eager_attention(text_model: nn.Module) -> Iterator[None]:
    """Trace plain attention: the scaled-dot-product path exports as more, smaller ops."""
    previous = text_model.config._attn_implementation
    text_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        text_model.set_attn_implementation(previous)


def export_query_tower(model: MakeModel, path: str | Path) -> Path:
    """Write the query side of ``model`` (in eval mode) to ``path`` as ONNX, fp32.

    Batch size and token count are dynamic, so one file serves one query or many.
    """
    path = Path(path)
    tokenizer = model.query_encoder.tokenizer
    example = tokenizer(
        ["a query to trace", "two"],
        padding=True,
        return_tensors="pt",
        truncation=True,
        max_length=model.max_query_tokens,
    )
    text_model = model.query_encoder.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), _eager_attention(text_model):
            # The TorchScript tracer warns about Python conditions on shapes in the
            # Hugging Face attention code; they do not depend on batch or length.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                QueryTower(model),
                (example["input_ids"], example["attention_mask"]),
                str(path),
                dynamo=False,
                input_names=list(QUERY_INPUTS),
                output_names=[QUERY_OUTPUT],
                opset_version=OPSET,
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "tokens"},
                    "attention_mask": {0: "batch", 1: "tokens"},
                    QUERY_OUTPUT: {0: "batch"},
                },
            )
    finally:
        model.train(was_training)
    return path


class ProductTowers(nn.Module):
    """The title and image towers of ``MakeModel.encode_product``, as one module."""

    def __init__(self, model: MakeModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        title_tokens, title_pooled = self.model.encode_title(input_ids, attention_mask)
        image_tokens, image_pooled = self.model.encode_image(pixel_values)
        return title_tokens, title_pooled, image_tokens, image_pooled


def export_product_towers(model: MakeModel, path: str | Path) -> Path:
    """Write the title and image towers of ``model`` (in eval mode) to ``path`` as ONNX, fp32.

    Batch size and title length are dynamic; the image size is the model's.
    """
    path = Path(path)
    titles = model.title_encoder.tokenizer(
        ["a product title to trace, long enough", "two"],
        padding=True,
        return_tensors="pt",
        truncation=True,
        max_length=model.max_title_tokens,
    )
    pixels = torch.zeros(2, 3, model.image_size, model.image_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings, as for the query tower
            torch.onnx.export(
                ProductTowers(model),
                (titles["input_ids"], titles["attention_mask"], pixels),
                str(path),
                dynamo=False,
                input_names=list(PRODUCT_INPUTS),
                output_names=list(PRODUCT_OUTPUTS),
                opset_version=OPSET,
                dynamic_axes={
                    "title_input_ids": {0: "batch", 1: "tokens"},
                    "title_attention_mask": {0: "batch", 1: "tokens"},
                    "pixel_values": {0: "batch"},
                    "title_tokens": {0: "batch", 1: "tokens"},
                    "title_pooled": {0: "batch"},
                    "image_tokens": {0: "batch"},
                    "image_pooled": {0: "batch"},
                },
            )
    finally:
        model.train(was_training)
    return path


def quantize_int8(source: str | Path, target: str | Path, block_size: int = 32) -> Path:
    """Weight-only int8: every MatMul weight in blocks of ``block_size`` values, one scale each.

    ONNX Runtime's MatMulNBits (8 bits, accuracy level 4: the products are
    computed in int8 with the activations quantized per block at run time).
    Per-block scales keep the query vectors within cosine 0.9998 of fp32 on
    MiniLM-L6, where dynamic per-channel int8 (one scale per tensor for the
    activations) reached only 0.99 and changed 13-18% of the top-10.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=True, accuracy_level=4, bits=8
    )
    with _quiet():
        quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
        quantizer.process()
        quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return Path(target)
