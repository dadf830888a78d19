import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.index_testing import PRODUCTS, build, write_catalog
from makevl.data.catalog import Product, RowError, iter_catalog
from makevl.index.build import update_index
from makevl.index.encoders import HashingEncoder
from makevl.index.lexical import LEXICAL_FILES
from makevl.index.search import Searcher
from makevl.index.store import IndexStoreError, ModelMismatchError, read_manifest


def top_ids(searcher: Searcher, query: str, k: int = 3) -> list[str]:
    return [hit.id for hit in searcher.search([query], k=k)[0]]


def test_build_then_search_finds_the_right_products(index_dir):
    searcher = Searcher(index_dir)
    assert len(searcher) == len(PRODUCTS)
    assert top_ids(searcher, "red t-shirt", 1) == ["p1"]
    assert top_ids(searcher, "leather handbag", 1) == ["p4"]
    assert top_ids(searcher, "wrist watch", 1) == ["p12"]


def test_manifest_records_model_files_and_config(index_dir):
    manifest = read_manifest(index_dir)
    assert manifest["model_hash"] == HashingEncoder(32).model_hash
    assert manifest["encoder"] == {"type": "hashing", "dim": 32}
    assert manifest["dim"] == 32 and manifest["count"] == len(PRODUCTS)
    assert manifest["backend"] == "faiss" and manifest["index_type"] == "Flat"  # small: exact
    assert manifest["backend_options"] == {"factory": "HNSW32", "exact_threshold": 50_000}
    assert set(manifest["files"]) == {
        "index.faiss",
        "vectors.npy",
        "ids.npy",
        "products.parquet",
        *LEXICAL_FILES,
    }
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert manifest["created"]


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,Flat"])
def test_ann_index_above_threshold(tmp_path, catalog, factory):
    report = build(tmp_path / "ann", catalog, factory=factory, exact_threshold=5)
    assert report.index_type == factory
    searcher = Searcher(tmp_path / "ann", nprobe=4)
    assert read_manifest(tmp_path / "ann")["index_type"] == factory
    assert top_ids(searcher, "red t-shirt", 1) == ["p1"]


def test_skipped_rows_are_reported_not_dropped(tmp_path, catalog):
    items = [
        *iter_catalog(catalog),
        RowError("catalog.csv", 99, "malformed row"),
        Product("p1", "Red cotton t-shirt again", None, source="catalog.csv", line=100),
        Product("p13", "   ", None, source="catalog.csv", line=101),
    ]
    report = build(tmp_path / "index", items)
    assert report.count == len(PRODUCTS)
    assert len(report.skipped) == 3
    text = "\n".join(report.skipped)
    assert "catalog.csv:99" in text and "malformed row" in text
    assert "duplicate product id 'p1'" in text
    assert "'p13'" in text and "empty title" in text
    assert "skipped 3" in report.summary()


def test_no_usable_product_is_an_error(tmp_path):
    with pytest.raises(IndexStoreError, match="no product could be indexed.*bad row"):
        build(tmp_path / "index", [RowError("c.csv", 2, "bad row")])
    assert not (tmp_path / "index").exists()


def test_bad_factory_fails_before_writing_and_keeps_old_index(index_dir, catalog):
    before = read_manifest(index_dir)
    with pytest.raises(ValueError, match="FAISS factory string 'NoSuchIndex7'"):
        build(index_dir, catalog, factory="NoSuchIndex7", exact_threshold=0)
    assert read_manifest(index_dir) == before
    assert Searcher(index_dir).search(["red t-shirt"], k=1)[0][0].id == "p1"


def _update_rows(tmp_path: Path) -> Path:
    return write_catalog(
        tmp_path / "update",
        [
            ("p1", "Purple velvet cushion cover", (120, 20, 160), "home"),  # replaces p1
            ("p20", "Yellow rubber rain boots", (240, 220, 0), "boots"),  # new
        ],
    )


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_add_update_delete_then_search(tmp_path, catalog, factory):
    index = tmp_path / "index"
    build(index, catalog, factory=factory, exact_threshold=0 if factory != "Flat" else 50_000)
    report = update_index(
        index, add=iter_catalog(_update_rows(tmp_path)), delete=["p2"], progress=False
    )
    assert (report.added, report.removed, report.count) == (2, 2, len(PRODUCTS))

    searcher = Searcher(index, nprobe=4)
    assert len(searcher) == len(PRODUCTS)
    assert searcher.product("p2") is None
    assert searcher.product("p1").title == "Purple velvet cushion cover"
    assert top_ids(searcher, "rain boots", 1) == ["p20"]
    assert top_ids(searcher, "velvet cushion", 1) == ["p1"]
    every = {h.id for h in searcher.search(["denim jeans"], k=100)[0]}
    assert "p2" not in every and len(every) == len(PRODUCTS)
    assert top_ids(searcher, "red t-shirt", 1) != ["p1"]  # the old p1 vector is gone


def test_update_gives_same_results_as_fresh_build(tmp_path, catalog):
    index = tmp_path / "index"
    build(index, catalog)
    update_index(
        index, add=iter_catalog(_update_rows(tmp_path)), delete=["p2", "p7"], progress=False
    )
    final = {p.id: p for p in iter_catalog(catalog) if p.id not in ("p2", "p7")}
    final.update({p.id: p for p in iter_catalog(_update_rows(tmp_path))})
    build(tmp_path / "fresh", list(final.values()))

    queries = ["purple cushion", "rain boots", "leather", "shoes", "watch", "grey sweater"]
    updated = Searcher(index).search(queries, k=100)
    fresh = Searcher(tmp_path / "fresh").search(queries, k=100)
    for a, b in zip(updated, fresh):  # every product, same score (ties may come in any order)
        assert len(a) == len(final)
        scores = {h.id: h.score for h in b}
        assert {h.id for h in a} == set(scores)
        np.testing.assert_allclose([h.score for h in a], [scores[h.id] for h in a], atol=1e-6)
        assert a[0].id == b[0].id


def test_delete_unknown_id_is_an_error_unless_missing_ok(index_dir):
    with pytest.raises(IndexStoreError, match="not in the index: 'nope'"):
        update_index(index_dir, delete=["p1", "nope"], progress=False)
    assert Searcher(index_dir).product("p1") is not None  # nothing changed
    report = update_index(index_dir, delete=["p1", "nope"], missing_ok=True, progress=False)
    assert report.removed == 1 and Searcher(index_dir).product("p1") is None


def test_delete_everything_then_add_back(index_dir, catalog):
    update_index(index_dir, delete=[p[0] for p in PRODUCTS], progress=False)
    searcher = Searcher(index_dir)
    assert len(searcher) == 0 and searcher.search(["red"], k=3) == [[]]
    update_index(index_dir, add=iter_catalog(catalog), progress=False)
    assert top_ids(Searcher(index_dir), "red t-shirt", 1) == ["p1"]


def test_add_with_another_model_is_refused(index_dir, tmp_path):
    with pytest.raises(ModelMismatchError, match="was built with model hashing-v1-dim32"):
        update_index(
            index_dir,
            add=iter_catalog(_update_rows(tmp_path)),
            encoder=HashingEncoder(64),
            progress=False,
        )
    assert Searcher(index_dir).product("p20") is None


def test_growing_past_threshold_switches_to_ann(tmp_path, catalog):
    index = tmp_path / "index"
    build(index, catalog, exact_threshold=13, factory="HNSW32")
    assert read_manifest(index)["index_type"] == "Flat"
    update_index(index, add=iter_catalog(_update_rows(tmp_path)), progress=False)
    assert read_manifest(index)["index_type"] == "HNSW32"
    assert top_ids(Searcher(index), "rain boots", 1) == ["p20"]


def test_embedded_image_bytes_are_kept(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(buffer, format="PNG")
    products = [
        Product("b1", "Blue square sticker", buffer.getvalue()),
        Product("b2", "Sticker without a picture", None),
    ]
    build(tmp_path / "index", products)
    searcher = Searcher(tmp_path / "index")
    assert searcher.image("b1") == buffer.getvalue()
    assert searcher.product("b1").image == "embedded"
    assert searcher.image("b2") is None and searcher.product("b2").image is None
    assert json.loads(json.dumps(searcher.product("b1").to_dict()))["id"] == "b1"


def test_ivf_update_is_in_place_not_retrained(tmp_path, catalog):
    """Flat/IVF updates use FAISS remove_ids/add_with_ids: the IVF centroids stay as trained."""
    import faiss

    index = tmp_path / "index"
    build(index, catalog, factory="IVF4,Flat", exact_threshold=0)

    def centroids():
        searcher = Searcher(index)  # keeps the index alive while we read it
        ivf = faiss.extract_index_ivf(searcher.backend.index)
        return ivf.quantizer.reconstruct_n(0, ivf.nlist)

    before = centroids()
    update_index(
        index, add=iter_catalog(_update_rows(tmp_path)), delete=["p2", "p5"], progress=False
    )
    np.testing.assert_array_equal(centroids(), before)
    assert top_ids(Searcher(index, nprobe=4), "rain boots", 1) == ["p20"]
