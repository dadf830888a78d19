"""``makevl data shard``: hash partition and join into train pair shards."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from helpers import write_pair_shop
from makevl.cli import main as cli_main
from makevl.config import DataConfig
from makevl.data.catalog import CatalogError
from makevl.data.shard import (
    ShardError,
    ShardManifest,
    bucket_of,
    parquet_rows,
    shard_shop,
)
from makevl.data.shop import load_shop, split_of
from makevl.keywords import KeywordVocab, build_vocabulary
from makevl.spelling import SpellingCorrector, build_spelling
from makevl.training.data import training_pairs


def shard_pairs(manifest: ShardManifest) -> list[tuple[int, dict]]:
    return [(i, row) for i in range(len(manifest.shards)) for row in parquet_rows(manifest.path(i))]


def test_every_train_pair_once_with_its_keywords_and_no_val_or_test_product(tmp_path: Path):
    catalog = write_pair_shop(tmp_path / "shop", train_products=30)
    with (tmp_path / "shop" / "queries.csv").open("a", newline="") as handle:
        csv.writer(handle).writerows([("red shirt 0", "p0000", 1),  # a repeated pair
                                      ("no such thing", "p9999", 1),  # an unknown product
                                      ("a negative", "p0001", 0)])  # fmt: skip
    manifest = shard_shop([catalog], [catalog.parent / "queries.csv"], tmp_path / "shards", 4,
                          progress=lambda _: None)  # fmt: skip

    shop = load_shop(DataConfig(catalog=str(catalog)))
    products, records = shop.products_in("train"), shop.queries_in("train")
    expected = {(query, products[row].id) for query, row in training_pairs(products, records)}
    rows = shard_pairs(manifest)
    got = [(row["query"], row["product_id"]) for _, row in rows]
    assert len(got) == len(set(got)) == len(expected) == manifest.rows == 60
    assert set(got) == expected
    assert all(split_of(pid) == "train" for _, pid in got)
    assert all(bucket_of(row["product_id"], 4) == shard for shard, row in rows)  # partitioned
    assert [s.rows for s in manifest.shards] == [sum(s == i for s, _ in rows) for i in range(4)]

    # The vocabulary (mined from all train products here) is the in-memory one.
    vocab = build_vocabulary(products, records)
    saved = KeywordVocab.load(tmp_path / "shards" / "keywords.json")
    assert saved.keywords == vocab.keywords
    for _, row in rows:
        assert row["keywords"] == vocab.keywords_of(row["product_id"])
    assert all(row["image_path"].endswith("product.png") for _, row in rows)
    # So are the spelling corrector's word counts.
    spelling = SpellingCorrector.load(manifest.spelling_file)
    assert spelling.counts == build_spelling(products, records).counts

    val = manifest.val_set()
    memory_val = shop.query_set("val")
    assert val.queries == memory_val.queries and val.qrels == memory_val.qrels
    assert [p.id for p in val.pool] == [p.id for p in memory_val.pool]


def test_bad_rows_are_skipped_and_counted_per_shard(tmp_path: Path):
    catalog = write_pair_shop(tmp_path / "shop", train_products=12)
    rows = list(csv.reader(catalog.open()))
    train_ids = [r[0] for r in rows[1:] if split_of(r[0]) == "train"]
    empty, missing, corrupt, outside, duplicated = train_ids[:5]
    (catalog.parent / "images" / "corrupt.png").write_bytes(b"not a picture")
    for row in rows[1:]:
        if row[0] == empty:
            row[1] = "  "
        if row[0] == missing:
            row[2] = ""
        if row[0] == corrupt:
            row[2] = "images/corrupt.png"
        if row[0] == outside:
            row[2] = "../elsewhere.png"
    rows.append([duplicated, "another title", "images/product.png", "bag", "red"])
    rows.append(["too", "few fields"])
    with catalog.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)

    manifest = shard_shop([catalog], [catalog.parent / "queries.csv"], tmp_path / "shards", 3,
                          check_images=True, progress=lambda _: None)  # fmt: skip
    skipped = {i: shard.skipped for i, shard in enumerate(manifest.shards)}
    assert skipped[bucket_of(empty, 3)].get("empty_title") == 1
    assert skipped[bucket_of(missing, 3)].get("missing_image") == 1
    assert skipped[bucket_of(corrupt, 3)].get("unreadable_image") == 1
    assert skipped[bucket_of(duplicated, 3)].get("duplicate_id") == 1
    assert sum(s.get("unknown_product", 0) for s in skipped.values()) == 8  # 2 queries each
    assert manifest.skipped == {"malformed_row": 1, "image_outside_root": 1}
    kept = {row["product_id"] for _, row in shard_pairs(manifest)}
    assert not {empty, missing, corrupt, outside} & kept and duplicated in kept
    assert manifest.rows == 2 * (12 - 4)
    titles = {row["title"] for _, row in shard_pairs(manifest) if row["product_id"] == duplicated}
    assert titles != {"another title"}  # the first row of an id wins


def test_a_folder_of_catalog_files_gives_the_same_shards(tmp_path: Path):
    catalog = write_pair_shop(tmp_path / "shop", train_products=10)
    rows = list(csv.reader(catalog.open()))
    parts = tmp_path / "parts"
    parts.mkdir()
    for n, chunk in enumerate([rows[1:6], rows[6:]]):
        with (parts / f"catalog-{n}.csv").open("w", newline="") as handle:
            csv.writer(handle).writerows([rows[0], *chunk])
    one = shard_shop([catalog], [catalog.parent / "queries.csv"], tmp_path / "one", 2,
                     progress=lambda _: None)  # fmt: skip
    many = shard_shop([parts], [catalog.parent / "queries.csv"], tmp_path / "many", 2,
                      progress=lambda _: None)  # fmt: skip
    assert [s.rows for s in one.shards] == [s.rows for s in many.shards]
    for i in range(2):
        a = [(r["query"], r["product_id"]) for r in parquet_rows(one.path(i))]
        b = [(r["query"], r["product_id"]) for r in parquet_rows(many.path(i))]
        assert a == b


def test_manifest_catches_a_changed_shard_and_the_command_a_used_folder(tmp_path: Path):
    catalog = write_pair_shop(tmp_path / "shop", train_products=6)
    out = tmp_path / "shards"
    code = cli_main(["data", "shard", str(catalog), "--queries", str(catalog.parent / "queries.csv"),
                     "--out", str(out), "--shards", "2"])  # fmt: skip
    assert code == 0
    assert ShardManifest.load(out, verify=True).rows == 12
    assert json.loads((out / "manifest.json").read_text())["rows"] == 12
    with pytest.raises(ShardError, match="not empty"):
        shard_shop([catalog], [catalog.parent / "queries.csv"], out, 2)
    shard = ShardManifest.load(out).path(0)
    shard.write_bytes(shard.read_bytes() + b"x")
    with pytest.raises(ShardError, match="SHA-256"):
        ShardManifest.load(out, verify=True)
    bad_column = cli_main(["data", "shard", str(catalog), "--queries", str(catalog),
                           "--out", str(tmp_path / "other"), "--shards", "2", "--column", "c"])  # fmt: skip
    assert bad_column == 2
    (out / "manifest.json").unlink()
    with pytest.raises(ShardError, match="makevl data shard"):
        ShardManifest.load(out)


def test_a_failed_run_leaves_no_half_written_folder(tmp_path: Path):
    catalog = write_pair_shop(tmp_path / "shop", train_products=4)
    queries = catalog.parent / "queries.csv"
    queries.write_text(queries.read_text() + '"an unclosed quote,p0000,1\n' + "x,p0001,1\n" * 30)
    with pytest.raises(CatalogError, match="unclosed quote"):
        shard_shop([catalog], [queries], tmp_path / "shards", 2, progress=lambda _: None)
    assert not (tmp_path / "shards").exists()
