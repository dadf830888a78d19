"""Index builds through the compiled product side (issue #9 item 6): parity gate,
checksums, fallback to torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from index.index_testing import PRODUCTS, write_catalog
from index.test_checkpoint_index import save_tiny_checkpoint
from makevl.data.catalog import iter_catalog
from makevl.index import runtime as runtime_module
from makevl.index.build import build_index, update_index
from makevl.index.encoders import load_checkpoint_encoder
from makevl.index.product_runtime import PRODUCT_RUNTIME, PRODUCT_TOWER_FILE, OnnxProductEncoder
from makevl.index.search import Searcher
from makevl.index.store import IndexFileError, read_manifest
from makevl.models import export as export_module
from makevl.models.inference import MakeEncoder
from makevl.models.make import MakeModel

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("product_runtime")
    catalog = write_catalog(folder / "shop")
    return save_tiny_checkpoint(folder / "ckpt", catalog, seed=0), catalog


def build(checkpoint, index_dir, **options):
    path, catalog = checkpoint
    encoder, spec, model_hash, cfg = load_checkpoint_encoder(path)
    build_index(
        iter_catalog(catalog),
        index_dir,
        encoder,
        encoder_spec=spec,
        model_hash=model_hash,
        config=cfg,
        progress=False,
        image_workers=0,
        **options,
    )
    return read_manifest(index_dir)


def stored_vectors(index_dir) -> np.ndarray:
    return np.load(index_dir / "vectors.npy")


def test_build_encodes_through_onnx_with_torch_parity(checkpoint, tmp_path, monkeypatch):
    used = []
    original = OnnxProductEncoder._product_outputs
    monkeypatch.setattr(
        OnnxProductEncoder,
        "_product_outputs",
        lambda self, *a: used.append(len(a[0]["input_ids"])) or original(self, *a),
    )
    manifest = build(checkpoint, tmp_path / "onnx")
    entry = manifest["product_runtimes"][PRODUCT_RUNTIME]
    assert entry["file"] == PRODUCT_TOWER_FILE
    assert (tmp_path / "onnx" / PRODUCT_TOWER_FILE).is_file()
    assert entry["parity"]["products"] == len(PRODUCTS)
    assert entry["parity"]["min_cosine"] >= 0.999 and entry["parity"]["overlap"] >= 0.99
    assert sum(used) == 2 * len(PRODUCTS)  # the parity sample, then the catalog

    torch_manifest = build(checkpoint, tmp_path / "torch", product_runtime="torch")
    assert torch_manifest["product_runtimes"] == {}
    onnx, reference = stored_vectors(tmp_path / "onnx"), stored_vectors(tmp_path / "torch")
    assert np.sum(onnx * reference, axis=1).min() >= 0.999
    hits = Searcher(tmp_path / "onnx").search(["red t-shirt"], k=3)[0]
    assert len(hits) == 3


def test_build_falls_back_to_torch_without_onnxruntime(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_module, "onnx_available", lambda: False)
    manifest = build(checkpoint, tmp_path / "index")
    assert manifest["product_runtimes"] == {}
    assert not (tmp_path / "index" / PRODUCT_TOWER_FILE).exists()
    assert manifest["count"] == len(PRODUCTS)


def test_altered_product_runtime_is_refused(checkpoint, tmp_path, monkeypatch):
    """Towers that give other vectors than torch (here: another model's) fail the parity
    gate; the build encodes in torch and records no runtime."""
    export = export_module.export_product_towers
    altered = []

    def export_other_model(model, path):
        altered.append(path)
        torch.manual_seed(7)
        donor = MakeModel(model.model_cfg, model.num_keywords, model.image_size)
        return export(donor, path)

    monkeypatch.setattr(export_module, "export_product_towers", export_other_model)
    manifest = build(checkpoint, tmp_path / "index")
    assert altered, "the build did not export"
    assert manifest["product_runtimes"] == {}
    assert not (tmp_path / "index" / PRODUCT_TOWER_FILE).exists()
    reference = build(checkpoint, tmp_path / "torch", product_runtime="torch")
    assert reference["count"] == manifest["count"]
    np.testing.assert_allclose(
        stored_vectors(tmp_path / "index"), stored_vectors(tmp_path / "torch"), atol=1e-5
    )


def test_index_add_uses_the_recorded_runtime_and_refuses_a_tampered_one(
    checkpoint, tmp_path, monkeypatch
):
    index_dir = tmp_path / "index"
    build(checkpoint, index_dir)
    new = write_catalog(
        tmp_path / "more", [("n1", "Purple velvet cushion", (120, 20, 160), "home")]
    )
    encoders = []
    original = MakeEncoder.encode_products
    monkeypatch.setattr(
        MakeEncoder,
        "encode_products",
        lambda self, *a, **k: encoders.append(type(self)) or original(self, *a, **k),
    )
    update_index(index_dir, add=iter_catalog(new), progress=False)
    assert encoders == [OnnxProductEncoder]
    manifest = read_manifest(index_dir)
    assert manifest["count"] == len(PRODUCTS) + 1
    assert (index_dir / manifest["product_runtimes"][PRODUCT_RUNTIME]["file"]).is_file()

    path = index_dir.resolve() / PRODUCT_TOWER_FILE
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(IndexFileError, match="checksum mismatch.*product runtime"):
        update_index(index_dir, add=iter_catalog(new), progress=False)
