import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from makevl.config import ColumnMapping
from makevl.data.catalog import (
    CatalogError,
    Product,
    RowError,
    iter_catalog,
    iter_queries,
    write_catalog_csv,
)
from makevl.data.images import load_image


def test_csv_reader_resolves_images_relative_to_catalog(small_catalog: Path):
    items = list(iter_catalog(small_catalog))
    assert [p.id for p in items] == ["p1", "p2", "p3", "p4"]
    first = items[0]
    assert isinstance(first, Product)
    assert first.title == "Red cotton t-shirt for men"
    assert first.image == str(small_catalog.parent.resolve() / "images" / "p1.png")
    assert first.keywords == ["tshirt", "red"]
    assert first.attributes == {"category": "tshirt", "colour": "red"}
    assert first.line == 2  # header is line 1
    assert load_image(first.image).getpixel((0, 0)) == (220, 20, 20)


def test_jsonl_reader_with_column_mapping_and_malformed_line(tmp_path: Path):
    path = tmp_path / "catalog.jsonl"
    path.write_text(
        json.dumps({"sku": "a", "name": "Alpha shoe", "pic": "a.png", "brand": "X"}) + "\n"
        + "{not json\n"
        + "\n"
        + json.dumps(["a", "list"]) + "\n"
        + json.dumps({"sku": "b", "name": "Beta bag", "pic": "", "brand": "Y"}) + "\n"
    )
    columns = ColumnMapping(id="sku", title="name", image="pic", keywords=None)
    items = list(iter_catalog(path, columns))
    assert [type(i).__name__ for i in items] == ["Product", "RowError", "RowError", "Product"]
    assert items[0].attributes == {"brand": "X"}
    assert items[1].line == 2 and "malformed JSON" in items[1].message
    assert str(path) in str(items[1])
    assert items[2].line == 4
    assert items[3].image is None  # empty reference -> no image


def test_parquet_reader_with_image_bytes(tmp_path: Path, small_catalog: Path):
    png = (small_catalog.parent / "images" / "p2.png").read_bytes()
    table = pa.table({"id": ["x1", "x2"], "title": ["one", "two"],
                      "image": [png, None], "colour": ["blue", None]})
    path = tmp_path / "catalog.parquet"
    pq.write_table(table, path)
    items = list(iter_catalog(path))
    assert items[0].image == png and items[1].image is None
    assert items[0].attributes == {"colour": "blue"} and items[1].attributes == {}
    assert load_image(items[0].image).getpixel((1, 1)) == (20, 20, 220)
    assert (items[0].line, items[1].line) == (0, 1)


def test_parquet_reader_streams_in_batches(tmp_path: Path, monkeypatch):
    n = 5000
    pq.write_table(pa.table({"id": [str(i) for i in range(n)], "title": ["t"] * n}),
                   tmp_path / "big.parquet", row_group_size=1000)
    stream = iter_catalog(tmp_path / "big.parquet")
    first = next(stream)
    assert first.id == "0"
    assert sum(1 for _ in stream) == n - 1


def test_csv_malformed_rows_named_with_line(tmp_path: Path):
    path = tmp_path / "c.csv"
    path.write_text("id,title,image\n1,ok,\n2,too,many,fields\n,no id,\n3,\"unterminated\n")
    items = list(iter_catalog(path))
    kinds = [(type(i).__name__, i.line) for i in items]
    assert kinds[0] == ("Product", 2)
    assert kinds[1] == ("RowError", 3) and "3 fields" not in items[1].message
    assert "4 fields" in items[1].message
    assert isinstance(items[2], RowError) and items[2].field == "id"
    assert all(str(path) in str(i) for i in items[1:] if isinstance(i, RowError))


def test_unknown_format_and_missing_file(tmp_path: Path):
    with pytest.raises(CatalogError, match="unknown file type"):
        list(iter_catalog(tmp_path / "x.xlsx"))
    with pytest.raises(CatalogError, match="not found"):
        list(iter_catalog(tmp_path / "nope.csv"))


def test_query_log_reader(tmp_path: Path):
    path = tmp_path / "q.csv"
    path.write_text("query,product_id,label\nred shirt,p1,3\n,p2,1\nblue,p2,abc\nshoes,p3,\n")
    items = list(iter_queries(path))
    assert items[0].query == "red shirt" and items[0].label == 3.0
    assert isinstance(items[1], RowError) and items[1].field == "query"
    assert isinstance(items[2], RowError) and "not a number" in items[2].message
    assert items[3].label == 1.0


def test_write_catalog_round_trip(small_catalog: Path, tmp_path: Path):
    products = list(iter_catalog(small_catalog))
    out = small_catalog.parent / "copy.csv"
    write_catalog_csv(products, out)
    again = list(iter_catalog(out))
    assert [(p.id, p.title, p.image, p.keywords, p.attributes) for p in again] == [
        (p.id, p.title, p.image, p.keywords, p.attributes) for p in products
    ]
