"""``makevl index build|add|delete|info`` and ``makevl search`` from the command line."""

import json

import pytest

from index.index_testing import PRODUCTS, write_catalog
from makevl.cli import main
from makevl.index.search import Searcher


def search_json(capsys, index, query, k=3):
    capsys.readouterr()
    assert main(["search", str(index), query, "-k", str(k), "--json"]) == 0
    return json.loads(capsys.readouterr().out.splitlines()[0])["results"]


@pytest.mark.parametrize(
    "backend, exact",
    [([], "Flat"), (["--backend", "milvus", "--milvus-uri", "vectors.db"], "FLAT")],
)
def test_build_search_add_delete(tmp_path, catalog, capsys, backend, exact):
    index = tmp_path / "index"
    build = ["index", "build", "--hashing-encoder", "32", "--catalog", str(catalog)]
    assert main([*build, "--out", str(index), "--quiet", *backend]) == 0
    assert f"{len(PRODUCTS)} products ({exact})" in capsys.readouterr().out
    assert search_json(capsys, index, "red t-shirt")[0]["id"] == "p1"

    capsys.readouterr()
    assert main(["search", str(index), "red t-shirt", "-k", "2"]) == 0
    table = capsys.readouterr().out
    assert "Red cotton t-shirt for men" in table and "p1" in table

    extra = write_catalog(
        tmp_path / "more", [("p30", "Teal ceramic coffee mug", (0, 128, 128), "mug")]
    )
    assert main(["index", "add", str(index), "--catalog", str(extra), "--quiet"]) == 0
    assert search_json(capsys, index, "coffee mug")[0]["id"] == "p30"

    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("p30\n\np1\n")
    assert main(["index", "delete", str(index), "--ids", "p2", "--ids-file", str(ids_file)]) == 0
    assert "removed 3" in capsys.readouterr().out
    assert {"p1", "p2", "p30"}.isdisjoint(h["id"] for h in search_json(capsys, index, "mug", k=50))
    assert len(Searcher(index)) == len(PRODUCTS) - 2

    assert main(["index", "info", str(index), "--verify"]) == 0
    out = capsys.readouterr().out
    assert '"count": 10' in out and "all files match" in out


def test_column_mapping(tmp_path, capsys):
    path = tmp_path / "styles.csv"
    path.write_text("sku,productDisplayName\nA1,Orange wool beanie\nA2,Black rain jacket\n")
    assert (
        main(
            [
                "index",
                "build",
                "--hashing-encoder",
                "32",
                "--catalog",
                str(path),
                "--out",
                str(tmp_path / "index"),
                "--column",
                "id=sku",
                "--column",
                "title=productDisplayName",
                "--column",
                "image=",
                "--quiet",
            ]
        )
        == 0
    )
    assert search_json(capsys, tmp_path / "index", "beanie")[0]["id"] == "A1"
    assert (
        main(
            [
                "index",
                "build",
                "--hashing-encoder",
                "32",
                "--catalog",
                str(path),
                "--out",
                str(tmp_path / "other"),
                "--column",
                "colour=x",
            ]
        )
        == 1
    )
    assert "unknown field 'colour'" in capsys.readouterr().err


def test_errors_are_clear_and_exit_nonzero(tmp_path, catalog, capsys):
    index = tmp_path / "index"
    main(
        [
            "index",
            "build",
            "--hashing-encoder",
            "32",
            "--catalog",
            str(catalog),
            "--out",
            str(index),
            "--quiet",
        ]
    )
    capsys.readouterr()

    assert main(["index", "delete", str(index), "--ids", "nope"]) == 1
    assert "not in the index: 'nope'" in capsys.readouterr().err

    path = index / "products.parquet"
    path.write_bytes(path.read_bytes()[:-10])
    assert main(["search", str(index), "red"]) == 1
    assert "products.parquet: checksum mismatch" in capsys.readouterr().err
    assert main(["index", "info", str(index), "--verify"]) == 1
    assert "products.parquet" in capsys.readouterr().err

    assert (
        main(
            [
                "index",
                "build",
                "--hashing-encoder",
                "32",
                "--catalog",
                str(tmp_path / "no.csv"),
                "--out",
                str(tmp_path / "x"),
                "--quiet",
            ]
        )
        == 1
    )
    assert "file not found" in capsys.readouterr().err
    assert main(["search", str(tmp_path / "missing"), "red"]) == 1
    assert "no such index directory" in capsys.readouterr().err
    assert main(["search", str(index), "  "]) == 2


def test_search_with_filters_hybrid_and_explain(tmp_path, catalog, capsys):
    index = tmp_path / "index"
    build = ["index", "build", "--hashing-encoder", "32", "--catalog", str(catalog), "--out"]
    assert main([*build, str(index), "--quiet"]) == 0
    capsys.readouterr()
    args = ["search", str(index), "shoes", "--filter", "category:shoes", "--json", "--explain"]
    assert main([*args, "--mode", "hybrid", "--lexical-weight", "2"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert {hit["id"] for hit in line["results"]} == {"p3", "p6"}
    assert line["keywords"] == []  # the hashing stand-in has no Keyword Enhancement
    assert main(["search", str(index), "shoes", "--filter", "colour:red"]) == 1
    assert "unknown filter attribute 'colour'" in capsys.readouterr().err
    assert main(["search", str(index), "shoes", "--filter", "red"]) == 2
    assert "not ATTRIBUTE:VALUE" in capsys.readouterr().err
