"""Texts and products in, numpy vectors out: preprocessing and batched encoding."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from makevl.data.catalog import Product
from makevl.models.inference import MakeEncoder, ProductVectors
from models.tiny import QUERIES, SIZE, TITLES, tiny_model


@pytest.fixture(scope="module")
def encoder() -> MakeEncoder:
    return MakeEncoder(tiny_model().eval())


def test_preprocessing(encoder):
    long_query = " ".join(["shoe"] * 50)
    tokens = encoder.tokenize_queries([long_query, "red"])
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == (2, encoder.model.max_query_tokens)
    assert (
        encoder.tokenize_titles([long_query])["input_ids"].shape[1]
        == encoder.model.max_title_tokens
    )
    tall = Image.new("RGB", (20, 60), (0, 0, 0))
    pixels = encoder.image_transform(tall)
    assert pixels.shape == (3, SIZE, SIZE)
    mean = torch.tensor(encoder.model.image_encoder.mean)
    std = torch.tensor(encoder.model.image_encoder.std)
    torch.testing.assert_close(pixels[:, SIZE // 2, 0], (1 - mean) / std)  # white padding
    torch.testing.assert_close(pixels[:, SIZE // 2, SIZE // 2], (0 - mean) / std)  # the photo


def write_products(tmp_path, n=5):
    products = []
    for i in range(n):
        path = tmp_path / f"p{i}.jpg"
        Image.new("RGB", (40, 50), (40 * i, 200 - 30 * i, 90)).save(path)
        products.append(Product(f"p{i}", TITLES[i], str(path), source="catalog.csv", line=i + 2))
    return products


def test_batched_encoding_is_deterministic_and_tolerates_bad_images(encoder, tmp_path, caplog):
    model = encoder.model
    products = write_products(tmp_path)
    (tmp_path / "x.jpg").write_text("this is not a JPEG")
    broken = Product("bad", "Broken image product", str(tmp_path / "x.jpg"), source="c.csv", line=9)
    products.insert(2, broken)
    model.train()
    failures = []
    encoded = encoder.encode_products(
        iter(products), batch_size=4, on_error=lambda p, e: failures.append((p.id, str(e)))
    )
    assert isinstance(encoded, ProductVectors)
    vectors, weights, ids = encoded
    assert model.training  # mode restored
    assert vectors.shape == (6, 32) and vectors.dtype == np.float32
    assert weights.shape == (6, 3) and ids == [p.id for p in products]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
    assert [f[0] for f in failures] == ["bad"] and "x.jpg" in failures[0][1]

    again, _, _ = encoder.encode_products(products, batch_size=2, on_error=lambda p, e: None)
    np.testing.assert_allclose(vectors, again, atol=1e-5)
    with caplog.at_level(logging.WARNING):
        encoder.encode_products([broken])
    assert "bad" in caplog.text and "c.csv:9" in caplog.text

    for branch in ("title", "image", "fused"):
        vectors_of_branch = encoder.encode_branch(products, branch, on_error=lambda p, e: None)
        assert vectors_of_branch.shape == (6, 32)
        np.testing.assert_allclose(np.linalg.norm(vectors_of_branch, axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown branch 'colour'"):
        encoder.encode_branch(products, "colour")
    empty = encoder.encode_products([])
    assert empty.vectors.shape == (0, 32) and empty.modality_weights.shape == (0, 3)
    assert empty.ids == [] and encoder.encode_branch([], "image").shape == (0, 32)

    queries = encoder.encode_queries(QUERIES, batch_size=4)
    assert queries.shape == (6, 32) and queries.dtype == np.float32
    np.testing.assert_allclose(queries, encoder.encode_queries(QUERIES), atol=1e-5)
    assert encoder.encode_queries([]).shape == (0, 32)
    model.eval()


def test_queries_are_spelling_corrected_before_the_tokenizer_where_the_model_corrects():
    from makevl.spelling import SpellingCorrector

    model = tiny_model().eval()
    model.spelling = SpellingCorrector({"running": 3, "shoe": 2, "black": 2, "watch": 1})
    corrected, as_typed = MakeEncoder(model), MakeEncoder(model, correct_spelling=False)
    typos = ["runing shoe", "blakc watch"]
    clean = corrected.tokenize_queries(["running shoe", "black watch"])["input_ids"]
    assert torch.equal(corrected.tokenize_queries(typos)["input_ids"], clean)
    assert not torch.equal(as_typed.tokenize_queries(typos)["input_ids"], clean)
    np.testing.assert_array_equal(
        corrected.encode_queries(typos), corrected.encode_queries(["running shoe", "black watch"])
    )
