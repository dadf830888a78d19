"""The Milvus backend on Milvus Lite: versions as collections, product fields, errors.

The protocol tests (backends/test_faiss.py), the CLI test and the serving tests
run on Milvus Lite too; these cover what only Milvus has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pymilvus import MilvusClient

from index.index_testing import PRODUCTS, build, release_milvus_lite, write_catalog
from makevl.cli import main
from makevl.data.catalog import iter_catalog
from makevl.index.backends import create_backend
from makevl.index.build import update_index
from makevl.index.errors import IndexFileError
from makevl.index.search import Searcher
from makevl.index.store import read_manifest, versions_dir

ROOT = Path(__file__).resolve().parents[2]


def build_milvus(index: Path, catalog: Path, **options):
    return build(index, catalog, backend_name="milvus", **options)


def collection_of(index: Path) -> str:
    return read_manifest(index)["backend_options"]["collection"]


def lite_client(index: Path) -> MilvusClient:
    return MilvusClient(str(versions_dir(index) / "milvus.db"))


def test_same_results_as_faiss_flat(tmp_path, catalog):
    build(tmp_path / "faiss", catalog)
    build_milvus(tmp_path / "milvus", catalog)
    queries = ["red t-shirt", "leather", "shoes for running", "silk", "watch", "summer"]
    k = len(PRODUCTS)  # all of them: hashed words tie often, and ties may come in any order
    faiss_hits = Searcher(tmp_path / "faiss").search(queries, k=k)
    milvus_hits = Searcher(tmp_path / "milvus").search(queries, k=k)
    for expected, got in zip(faiss_hits, milvus_hits):
        np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], atol=1e-5)
        scores = {h.id: h.score for h in expected}
        assert len(got) == k and all(abs(scores[h.id] - h.score) < 1e-5 for h in got)


def test_products_fields_are_stored_for_milvus_filters(tmp_path, catalog):
    index = tmp_path / "index"
    build_milvus(index, catalog)
    rows = lite_client(index).query(
        collection_of(index),
        filter='attributes["category"] == "shoes"',
        output_fields=["product_id", "weight_title", "weight_image", "weight_fused"],
    )
    assert sorted(row["product_id"] for row in rows) == ["p3", "p6"]
    searcher = Searcher(index)
    for row in rows:
        weights = [row[f"weight_{m}"] for m in ("title", "image", "fused")]
        expected = searcher.product(row["product_id"]).modality_weights.values()
        np.testing.assert_allclose(weights, list(expected), atol=1e-6)


def test_each_version_has_its_own_collection_and_old_ones_are_dropped(tmp_path, catalog):
    index = tmp_path / "index"
    build_milvus(index, catalog)
    first = collection_of(index)
    update_index(index, delete=["p1"], progress=False)
    second = collection_of(index)
    client = lite_client(index)
    assert second != first and {first, second} <= set(client.list_collections())
    assert client.query(first, filter="", output_fields=["count(*)"])[0]["count(*)"] == 12
    update_index(index, add=list(iter_catalog(catalog))[:1], progress=False)
    third = collection_of(index)
    # the previous version's collection stays for servers still reading it; older ones go
    assert set(client.list_collections()) == {second, third}
    assert (versions_dir(index) / "milvus.db").is_dir() and len(Searcher(index)) == 12


def test_index_type_follows_the_size_on_save(tmp_path, catalog):
    index = tmp_path / "index"
    report = build_milvus(index, catalog, exact_threshold=14)
    assert report.index_type == "FLAT"
    more = write_catalog(tmp_path / "more", [("p20", "Teal mug", (0, 128, 128), "mug"),
                                             ("p21", "Tan hat", (200, 180, 140), "hat")])  # fmt: skip
    report = update_index(index, add=iter_catalog(more), progress=False)
    assert report.index_type == "HNSW" and read_manifest(index)["index_type"] == "HNSW"
    assert Searcher(index).search(["teal mug"], k=1)[0][0].id == "p20"


def test_a_dropped_collection_is_named(tmp_path, catalog):
    index = tmp_path / "index"
    build_milvus(index, catalog)
    lite_client(index).drop_collection(collection_of(index))
    with pytest.raises(IndexFileError, match=f"collection '{collection_of(index)}' not found"):
        Searcher(index)


def test_a_second_process_on_a_lite_database_gets_a_clear_error(tmp_path, catalog):
    index = tmp_path / "index"
    build_milvus(index, catalog)
    Searcher(index)  # this process now holds the Milvus Lite database, as `makevl serve` would
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    ran = subprocess.run(
        [sys.executable, "-m", "makevl.cli", "index", "delete", str(index), "--ids", "p1"],
        check=False, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 1 and "Milvus Lite serves one process at a time" in ran.stderr
    release_milvus_lite()
    assert main(["index", "delete", str(index), "--ids", "p1"]) == 0


def test_bad_milvus_options_are_named(tmp_path, catalog, capsys):
    with pytest.raises(ValueError, match="ending in .db or a server address"):
        create_backend("milvus", 8, tmp_path / "v", uri="vectors.sqlite")
    with pytest.raises(ValueError, match="Milvus index type 'PQ'"):
        create_backend("milvus", 8, tmp_path / "v", index_type="PQ")
    build_args = ["index", "build", "--hashing-encoder", "8", "--catalog", str(catalog),
                  "--out", str(tmp_path / "index"), "--backend", "milvus"]  # fmt: skip
    assert main([*build_args, "--milvus-uri", "http://127.0.0.1:1"]) == 1
    assert "--milvus-collection is needed with a Milvus server" in capsys.readouterr().err
    assert main([*build_args, "--factory", "HNSW32"]) == 1
    assert "--factory is for FAISS" in capsys.readouterr().err
    assert main([*build_args[:-2], "--milvus-uri", "vectors.db"]) == 1  # FAISS: not its flag
    assert "need --backend milvus" in capsys.readouterr().err
    assert not (tmp_path / "index").exists()


def test_manifest_names_uri_and_collection_not_credentials(tmp_path, catalog, monkeypatch):
    monkeypatch.setenv("MILVUS_TOKEN", "root:secret")
    index = tmp_path / "index"
    build_milvus(index, catalog, uri="vectors.db", collection_prefix="shop_a")
    options = read_manifest(index)["backend_options"]
    assert options["uri"] == "vectors.db" and options["collection"].startswith("shop_a_v")
    assert "secret" not in json.dumps(read_manifest(index))
    assert (versions_dir(index) / "vectors.db").is_dir()
    assert len(PRODUCTS) == len(Searcher(index))


@pytest.mark.slow
def test_fashion_mini_exact_top10_equals_faiss_flat(tmp_path):
    """Every fashion-mini test query: Milvus FLAT's top 10 is FAISS Flat's (hashing encoder).

    The hashing encoder gives products with the same text the same vector, so
    scores tie exactly; the two engines may order a tied group differently and,
    at rank 10, keep different members of it. Ties are compared as groups.
    """
    from makevl.config import DataConfig
    from makevl.data.shop import fashion_mini_dir, load_shop
    from makevl.index.encoders import HashingEncoder

    if not (fashion_mini_dir() / "styles.csv").is_file():
        pytest.skip("fashion-mini is not in shared/datasets")
    shop = load_shop(DataConfig.model_validate({"preset": "fashion-mini"}))
    queries = list(shop.query_set("test").queries.values())
    encoder = HashingEncoder(256)
    build(tmp_path / "faiss", shop.products, encoder)
    build_milvus(tmp_path / "milvus", shop.products, encoder=encoder)
    faiss_hits = Searcher(tmp_path / "faiss").search(queries, k=10)
    milvus_hits = Searcher(tmp_path / "milvus").search(queries, k=10)
    assert len(queries) > 500 and read_manifest(tmp_path / "milvus")["index_type"] == "FLAT"
    for query, expected, got in zip(queries, faiss_hits, milvus_hits):
        scores = [h.score for h in expected]
        np.testing.assert_allclose([h.score for h in got], scores, atol=1e-5, err_msg=query)
        above_ties = scores[-1] + 1e-5  # the products that rank above the tied group at 10
        assert {h.id for h in got if h.score > above_ties} == {
            h.id for h in expected if h.score > above_ties
        }, query
