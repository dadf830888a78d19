"""The product side through ONNX Runtime (issue #9 item 6): same vectors as torch."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import write_image
from makevl.data.catalog import Product
from makevl.index.product_runtime import OnnxProductEncoder
from makevl.models.export import export_product_towers
from makevl.models.inference import MakeEncoder
from models.tiny import TITLES, tiny_model

pytest.importorskip("onnxruntime")

COLOURS = [
    (220, 20, 20),
    (20, 20, 220),
    (10, 10, 10),
    (20, 200, 20),
    (250, 250, 250),
    (240, 150, 180),
]


@pytest.fixture
def products(tmp_path) -> list[Product]:
    """Products with image files of two sizes (one not square) and one missing image."""
    out = []
    for i, (title, colour) in enumerate(zip(TITLES, COLOURS)):
        image = write_image(tmp_path / f"p{i}.png", colour, size=(32, 32) if i % 2 else (48, 24))
        out.append(Product(f"p{i}", title, str(image)))
    out.append(Product("missing", "Nike black shoe", str(tmp_path / "gone.png")))
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(
    "options,gate_temperature",
    [({}, 1.0), ({"image_pooled_stages": 2}, 1.0), ({}, 4.0),
     ({"image_pooled_stages": 2, "image_colour_levels": 2, "image_block_norm": True}, 1.0)],
)  # fmt: skip
def test_onnx_product_vectors_match_torch(tmp_path, products, options, gate_temperature):
    model = tiny_model(**options).eval()
    model.gate_temperature.fill_(gate_temperature)  # MA's calibration goes into the export
    path = export_product_towers(model, tmp_path / "towers.onnx")
    errors = []
    expected = MakeEncoder(model).encode_products(products, batch_size=4, on_error=lambda *a: None)
    found = OnnxProductEncoder(model, path, threads=1).encode_products(
        products, batch_size=4, on_error=lambda product, exc: errors.append(product.id)
    )
    assert found.ids == expected.ids == [p.id for p in products]
    assert cosines(expected.vectors, found.vectors).min() >= 0.999
    np.testing.assert_allclose(found.modality_weights, expected.modality_weights, atol=1e-4)
    assert errors == ["missing"]  # a blank image, reported, as in torch


def test_towers_of_another_model_do_not_match(tmp_path, products):
    """The check that refuses an altered runtime can fail: other weights, other vectors."""
    model = tiny_model(seed=0).eval()
    path = export_product_towers(tiny_model(seed=1).eval(), tmp_path / "towers.onnx")
    quiet = lambda product, exc: None
    expected = MakeEncoder(model).encode_products(products, on_error=quiet).vectors
    found = OnnxProductEncoder(model, path, threads=1).encode_products(products, on_error=quiet)
    assert cosines(expected, found.vectors).min() < 0.99


def test_image_workers_give_the_same_vectors_and_errors(products):
    model = tiny_model().eval()
    errors = {0: [], 2: []}
    vectors = {
        workers: MakeEncoder(model, image_workers=workers).encode_products(
            products,
            batch_size=3,
            on_error=lambda product, exc, w=workers: errors[w].append((product.id, str(exc))),
        )
        for workers in errors
    }
    assert vectors[2].ids == vectors[0].ids
    np.testing.assert_allclose(vectors[2].vectors, vectors[0].vectors, atol=1e-6)
    assert errors[2] == errors[0] and [pid for pid, _ in errors[0]] == ["missing"]
