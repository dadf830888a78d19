import csv
import json
from pathlib import Path

from data.bad_inputs import catalog_with_escaping_images, runaway_catalog
from helpers import write_image
from makevl.cli import main
from makevl.data.validate import validate


def make_bad_catalog(root: Path) -> tuple[Path, Path]:
    """One product per problem kind, plus two clean ones."""
    images = root / "images"
    write_image(images / "ok1.png")
    write_image(images / "ok2.jpg")
    write_image(images / "gray.png", mode="L")
    write_image(images / "rgba.png", mode="RGBA")
    write_image(images / "cmyk.jpg", mode="CMYK")
    write_image(images / "pal.png", mode="P")
    (images / "zero.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("I am text, not a JPEG")
    good = write_image(images / "big.jpg", size=(128, 128))
    (images / "trunc.jpg").write_bytes(good.read_bytes()[:300])
    rows = [
        ["ok1", "Plain red shirt", "images/ok1.png", "shirts"],
        ["ok2", "Blue jeans", "images/ok2.jpg", "jeans"],
        ["gray", "Gray photo", "images/gray.png", "shirts"],
        ["rgba", "Transparent photo", "images/rgba.png", "shirts"],
        ["cmyk", "CMYK photo", "images/cmyk.jpg", "shirts"],
        ["pal", "Palette photo", "images/pal.png", "shirts"],
        ["zero", "Zero byte image", "images/zero.jpg", "shirts"],
        ["text", "Text named jpg", "images/text.jpg", "shirts"],
        ["trunc", "Truncated jpeg", "images/trunc.jpg", "shirts"],
        ["missing", "Missing image", "images/nowhere.jpg", "shirts"],
        ["empty", "   ", "images/ok1.png", "shirts"],
        ["long", "word " * 200, "images/ok1.png", ""],
        ["ok1", "Duplicate id", "images/ok1.png", "shirts"],
    ]
    catalog = root / "catalog.csv"
    with catalog.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "title", "image", "category"])
        w.writerows(rows)
        f.write("bad,row,with,too,many,fields\n")
    queries = root / "queries.csv"
    queries.write_text("query,product_id,label\nred shirt,ok1,1\nghost,unknown-id,1\n")
    return catalog, queries


def test_every_bad_input_kind_is_reported(tmp_path: Path):
    catalog, queries = make_bad_catalog(tmp_path)
    report = validate(catalog, queries, max_title_chars=100, max_bad_fraction=0.9,
                      required_fields=["category"])
    c = report.counts
    assert report.rows == 14 and report.products == 13
    assert c["malformed_row"] == 1 and report.examples["malformed_row"][0].where.endswith(":15")
    assert c["duplicate_id"] == 1
    assert c["empty_title"] == 1 and report.examples["empty_title"][0].product_id == "empty"
    assert c["title_too_long"] == 1
    assert c["missing_image"] == 1
    assert c["unreadable_image"] == 3
    reasons = {i.product_id: i.message for i in report.examples["unreadable_image"]}
    assert "empty file" in reasons["zero"] and "not a readable image" in reasons["text"]
    assert "truncated" in reasons["trunc"]
    assert dict(report.converted_modes) == {"L": 1, "RGBA": 1, "CMYK": 1, "P": 1}
    assert c["empty_fields"] == 1 and report.examples["empty_fields"][0].product_id == "long"
    assert c["unknown_product"] == 1 and report.usable_query_rows == 1
    # converted images stay usable; 5 bad products (3 unreadable, 1 missing, 1 empty title)
    assert report.usable_products == 12 - 5
    assert not report.ok and any("duplicate" in e for e in report.errors)


def test_clean_catalog_is_ok_and_bad_share_fails(tmp_path: Path, small_catalog: Path):
    report = validate(small_catalog, small_catalog.parent / "queries.csv")
    assert report.ok, report.errors
    assert report.usable_products == 4 and report.usable_query_rows == 3
    (small_catalog.parent / "images" / "p1.png").write_text("broken")
    report = validate(small_catalog, max_bad_fraction=0.2)
    assert not report.ok and "more than max_bad_fraction" in report.errors[0]


def test_cli_exit_codes_and_json(tmp_path: Path, small_catalog: Path, capsys):
    assert main(["data", "validate", str(small_catalog), "--queries",
                 str(small_catalog.parent / "queries.csv"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["products"] == 4 and out["counts"]["unreadable_image"] == 0
    catalog, queries = make_bad_catalog(tmp_path / "bad")
    assert main(["data", "validate", str(catalog), "--queries", str(queries)]) == 1
    text = capsys.readouterr().out
    assert "NOT USABLE" in text and "duplicate" in text
    assert main(["data", "validate", str(tmp_path / "nope.csv")]) == 2


def test_runaway_quote_makes_validate_fail_at_its_line(tmp_path: Path, capsys):
    """The review's case: an unclosed quote at line 252 of 500 rows used to validate as OK."""
    catalog = runaway_catalog(tmp_path, opened_at=252)
    assert main(["data", "validate", str(catalog), "--no-images"]) == 1
    text = capsys.readouterr().out
    assert "NOT USABLE" in text and f"{catalog}:252: unclosed quote in field 'title'" in text
    assert main(["data", "validate", str(catalog), "--no-images", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["ok"] and out["counts"]["runaway_quote"] == 1
    assert out["examples"]["runaway_quote"][0]["where"] == f"{catalog}:252"


def test_validate_names_escaping_images_and_undecodable_bytes(tmp_path: Path, capsys):
    catalog = catalog_with_escaping_images(tmp_path)
    with catalog.open("ab") as handle:
        handle.write(b"latin,Caf\xe9 cr\xe8me,images/ok.png\n")
    report = validate(catalog, max_bad_fraction=0.9)
    assert report.rows == 9 and report.usable_products == 3
    assert report.counts["image_outside_root"] == 5 and report.counts["invalid_encoding"] == 1
    bad_bytes = report.examples["invalid_encoding"][0]
    assert (bad_bytes.where, bad_bytes.field) == (f"{catalog}:10", "title")
    assert main(["data", "validate", str(catalog), "--encoding", "latin-1",
                 "--image-root", str(tmp_path / "elsewhere"), "--max-bad-fraction", "0.3"]) == 0
    assert "image_outside_root: 2" in capsys.readouterr().out  # /etc/passwd, ../../etc/hostname
