"""An index of the small test catalog (plus one product whose image is stored as bytes)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from index.index_testing import build, release_milvus_lite, write_catalog
from makevl.data.catalog import Product, iter_catalog


def png_bytes(colour=(0, 0, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def served_index(request, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("served")
    products = list(iter_catalog(write_catalog(root / "shop")))
    products += [
        Product("b1", "Blue enamel badge", png_bytes()),
        Product("n1", "Gift card without a picture", None),
        Product("../../etc/passwd", "Oddly named product", None),
        Product("sku/42", "Green glass vase", png_bytes((0, 160, 0))),
    ]
    build(root / "index", products, backend_name=request.param)
    release_milvus_lite()  # so that a `makevl serve` subprocess can open the index
    return root / "index"
