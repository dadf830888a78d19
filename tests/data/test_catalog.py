import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.bad_inputs import catalog_with_escaping_images, runaway_catalog
from makevl.config import ColumnMapping
from makevl.data.catalog import (
    CatalogError,
    Product,
    RowError,
    RunawayQuoteError,
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


# --- image paths must stay inside the catalog's folder (or data.image_root) ---


def test_image_paths_outside_the_catalog_folder_are_row_errors(tmp_path: Path):
    catalog = catalog_with_escaping_images(tmp_path)
    items = list(iter_catalog(catalog))
    products = [i for i in items if isinstance(i, Product)]
    errors = [i for i in items if isinstance(i, RowError)]
    assert [p.id for p in products] == ["ok", "absolute_inside", "link_inside"]
    assert all(p.image == str(catalog.parent.resolve() / "images" / "ok.png") for p in products)
    assert [e.line for e in errors] == [5, 6, 7, 8, 9]
    assert {(e.kind, e.field) for e in errors} == {("image_outside_root", "image")}
    first = str(errors[0])
    assert f"{catalog}:5 [image]" in first and "/etc/passwd" in first and "--image-root" in first


def test_image_root_allows_one_more_folder(tmp_path: Path):
    catalog = catalog_with_escaping_images(tmp_path)
    items = list(iter_catalog(catalog, image_root=tmp_path / "elsewhere"))
    refused = [i.line for i in items if isinstance(i, RowError)]
    assert refused == [5, 6]  # /etc/passwd and ../../etc/hostname stay outside
    assert load_image(items[-1].image).size == (32, 32)  # the symlink into the image root
    with pytest.raises(CatalogError, match="image root is not a folder"):
        list(iter_catalog(catalog, image_root=tmp_path / "nowhere"))


def test_shop_loading_inherits_the_image_check(tmp_path: Path):
    from makevl.config import DataConfig
    from makevl.data.shop import load_shop

    catalog = catalog_with_escaping_images(tmp_path)
    (catalog.parent / "queries.csv").write_text("query,product_id\nred,ok\n")
    shop = load_shop(DataConfig(preset="custom", catalog=str(catalog),
                                queries=str(catalog.parent / "queries.csv")))
    assert [p.id for p in shop.products] == ["ok", "absolute_inside", "link_inside"]
    assert len(shop.errors) == 5


# --- an unclosed CSV quote must not swallow rows silently ---


@pytest.mark.parametrize(
    "opened_at, closed_at, column, suffix",
    [
        (252, None, "title", ".csv"),  # runs to the end of the file
        (252, None, "title", ".tsv"),
        (499, None, "image", ".csv"),  # swallows only the last two rows
        (252, 300, "title", ".csv"),  # closed by a later quote: one field too many
        (252, 300, "image", ".csv"),  # closed in the last column: field count matches
    ],
)
def test_unclosed_quote_that_swallows_rows_is_an_error_where_it_opened(
    tmp_path: Path, opened_at, closed_at, column, suffix
):
    path = runaway_catalog(tmp_path, opened_at, closed_at=closed_at, column=column, suffix=suffix)
    with pytest.raises(RunawayQuoteError, match=f"unclosed quote in field '{column}'") as caught:
        list(iter_catalog(path))
    assert caught.value.line == opened_at
    assert str(caught.value).startswith(f"{path}:{opened_at}: ")


def test_quoted_line_breaks_and_a_last_line_quote_stay_row_level(tmp_path: Path):
    path = tmp_path / "c.csv"
    path.write_text('id,title,image\np1,"Summer dress\nfloral, chiffon",\np2,Plain,\np3,"open,\n')
    items = list(iter_catalog(path))
    assert items[0].title == "Summer dress\nfloral, chiffon" and items[1].line == 4
    assert isinstance(items[2], RowError) and items[2].line == 5
    assert "unclosed quote" in items[2].message and items[2].field == "title"


# --- bytes the declared encoding cannot decode are named, never replaced ---


def test_non_utf8_bytes_are_a_row_error_naming_file_line_and_field(tmp_path: Path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"id,title,image\np1,Caf\xe9 cr\xe8me,\np2,Plain shirt,\n")
    bad, good = list(iter_catalog(path))
    assert isinstance(bad, RowError) and (bad.kind, bad.line, bad.field) == (
        "invalid_encoding", 2, "title")
    assert str(bad).startswith(f"{path}:2 [title]: byte 0xe9") and "--encoding" in str(bad)
    assert good.title == "Plain shirt"
    first = next(iter_catalog(path, encoding="latin-1"))
    assert first.title == "Café crème"


def test_non_utf8_bytes_in_jsonl_and_query_log(tmp_path: Path):
    catalog = tmp_path / "c.jsonl"
    catalog.write_bytes(b'{"id": "p1", "title": "Caf\xe9", "image": ""}\n'
                        b'{"id": "p2", "title": "Tea", "image": ""}\n')
    bad, good = list(iter_catalog(catalog))
    assert (bad.kind, bad.line, bad.field) == ("invalid_encoding", 1, "title") and good.id == "p2"
    assert next(iter_catalog(catalog, encoding="cp1252")).title == "Café"
    log = tmp_path / "q.csv"
    log.write_bytes(b"query,product_id\ncaf\xe9 au lait,p1\ntea,p2\n")
    bad, good = list(iter_queries(log))
    assert isinstance(bad, RowError) and (bad.line, bad.field) == (2, "query")
    assert good.query == "tea"
    assert next(iter_queries(log, encoding="latin-1")).query == "café au lait"


def test_byte_order_mark_and_unknown_encoding(tmp_path: Path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"\xef\xbb\xbfid,title,image\np1,Shirt,\n")
    assert next(iter_catalog(path)).id == "p1"
    with pytest.raises(CatalogError, match="unknown text encoding 'klingon'"):
        list(iter_catalog(path, encoding="klingon"))
