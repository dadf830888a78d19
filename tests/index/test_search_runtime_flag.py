"""``--runtime {auto,torch,onnx,onnx-int8}`` of ``makevl search`` and ``makevl serve``."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from index.test_runtime import QUERIES, checkpoint_index, index_dir  # noqa: F401 - fixtures
from makevl.cli import main
from makevl.index.runtime import export_runtimes
from makevl.serving.app import create_app


def searched_runtime(index, flag: str, capsys) -> str:
    assert main(["search", str(index), "red t-shirt", "-k", "2", "--json", "--runtime", flag]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert len(line["results"]) == 2
    return line["runtime"]


def test_search_runtime_flag(index_dir, capsys):  # noqa: F811 - the fixture
    assert searched_runtime(index_dir, "auto", capsys) == "torch"  # nothing exported yet
    assert main(["search", str(index_dir), "red t-shirt", "--runtime", "onnx"]) == 1
    assert "no onnx-fp32 query runtime" in capsys.readouterr().err

    export_runtimes(index_dir, queries=QUERIES)
    assert searched_runtime(index_dir, "auto", capsys) == "onnx-fp32"
    assert searched_runtime(index_dir, "onnx", capsys) == "onnx-fp32"
    assert searched_runtime(index_dir, "torch", capsys) == "torch"
    assert main(["search", str(index_dir), "red t-shirt", "--runtime", "onnx-int8"]) == 1
    assert "no onnx-int8 query runtime" in capsys.readouterr().err


def test_search_table_names_the_runtime(index_dir, capsys):  # noqa: F811 - the fixture
    assert main(["search", str(index_dir), "red t-shirt", "--runtime", "torch"]) == 0
    assert "torch query tower" in capsys.readouterr().out


def test_serve_refuses_a_runtime_the_index_lacks(index_dir, capsys):  # noqa: F811 - the fixture
    assert main(["serve", str(index_dir), "--runtime", "onnx", "--port", "1"]) == 1
    assert "no onnx-fp32 query runtime" in capsys.readouterr().err


def test_healthz_shows_the_runtime_and_a_reload_keeps_it(index_dir):  # noqa: F811 - the fixture
    app = create_app(index_dir, reload_s=0, runtime="torch")
    with TestClient(app) as client:
        assert client.get("/healthz").json()["runtime"] == "torch"
        export_runtimes(index_dir, queries=QUERIES)  # a new version with an ONNX tower
        assert app.state.live_index.check()
        health = client.get("/healthz").json()
        assert health["index_version"] == index_dir.resolve().name
        assert health["runtime"] == "torch"  # forced: stays torch across versions

    auto = create_app(index_dir, reload_s=0)
    with TestClient(auto) as client:
        assert client.get("/healthz").json()["runtime"] == "onnx-fp32"
        assert client.get("/search", params={"q": "red t-shirt"}).status_code == 200
