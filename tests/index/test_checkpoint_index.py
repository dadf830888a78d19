"""End to end with a real (tiny, untrained) MAKE checkpoint: build, search, refuse other weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import TINY_MODEL_OVERRIDES
from makevl.cli import main
from makevl.config import load_config
from makevl.index.encoders import EncoderSpecError, checkpoint_hash
from makevl.index.search import Searcher
from makevl.index.store import IndexFileError, ModelMismatchError, read_manifest


def save_tiny_checkpoint(directory, catalog, seed: int, correct_spelling: bool = False):
    from makevl.data.shop import read_catalog
    from makevl.keywords import build_vocabulary
    from makevl.models.checkpoint import save_checkpoint
    from makevl.models.make import MakeModel
    from makevl.spelling import build_spelling

    cfg = load_config(
        None,
        [
            "data.preset=custom",
            f"data.catalog={catalog}",
            f"data.queries={catalog}",
            f"model.spelling_correction={correct_spelling}",
            *TINY_MODEL_OVERRIDES,
        ],
    )
    products, _ = read_catalog(catalog)
    vocab = build_vocabulary(products)
    torch.manual_seed(seed)
    model = MakeModel.from_config(cfg, num_keywords=len(vocab))
    if correct_spelling:
        model.spelling = build_spelling(products, [])
    return save_checkpoint(directory, model, cfg, vocab)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_checkpoint_index_end_to_end(tmp_path, catalog, capsys, one_thread):
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", catalog, seed=0)
    out = tmp_path / "index"
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(ckpt),
                "--catalog",
                str(catalog),
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    manifest = read_manifest(out)
    assert manifest["model_hash"] == checkpoint_hash(ckpt)
    assert manifest["encoder"] == {"type": "checkpoint", "path": "model"}  # inside the index
    assert manifest["config"]["model"]["embed_dim"] == 32 and manifest["dim"] == 32

    searcher = Searcher(out)  # loads the checkpoint the manifest names
    hits = searcher.search(["red t-shirt", "leather handbag"], k=5)
    assert [len(h) for h in hits] == [5, 5]
    weights = np.array([list(h.modality_weights.values()) for h in hits[0]])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-4)
    # The stored product vectors are what the model gives for the catalog.
    from makevl.data.catalog import iter_catalog

    vectors, _, ids = searcher.encoder.encode_products(list(iter_catalog(catalog)))
    query = searcher.encoder.encode_queries(["red t-shirt"])[0]
    best = ids[int(np.argmax(vectors @ query))]
    assert hits[0][0].id == best

    # Without --catalog the shop the checkpoint was trained on is indexed.
    assert (
        main(
            [
                "index",
                "build",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp_path / "shop-index"),
                "--quiet",
            ]
        )
        == 0
    )
    assert Searcher(tmp_path / "shop-index").search(["red t-shirt"], k=1)[0][0].id == best

    capsys.readouterr()
    assert main(["search", str(out), "red t-shirt", "-k", "2", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["results"][0]["id"] == best

    # Retrained in place: same path, other weights. The index keeps its own copy, and
    # refuses queries encoded by the new weights.
    save_tiny_checkpoint(tmp_path / "ckpt", catalog, seed=1)
    assert Searcher(out).search(["red t-shirt"], k=1)[0][0].id == best
    with pytest.raises(ModelMismatchError, match="was built with model"):
        Searcher(out, checkpoint=tmp_path / "ckpt")
    assert main(["search", str(out), "red t-shirt", "--checkpoint", str(tmp_path / "ckpt")]) == 1
    assert "Rebuild the index" in capsys.readouterr().err


def test_an_index_corrects_spelling_as_its_checkpoint_does(tmp_path, catalog, capsys, one_thread):
    from makevl.index.runtime import export_runtimes

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", catalog, seed=0, correct_spelling=True)
    out = tmp_path / "index"
    command = ["index", "build", "--checkpoint", str(ckpt), "--catalog", str(catalog)]
    assert main([*command, "--out", str(out), "--quiet"]) == 0
    assert (out / "model" / "spelling.json").is_file()  # the index's own copy of the model
    shutil.rmtree(ckpt)

    def top(searcher, query):
        return [hit.id for hit in searcher.search([query], k=5)[0]]

    searcher = Searcher(out)
    assert searcher.searched_as(["lether handbga", "red"]) == ["leather handbag", "red"]
    expected = top(searcher, "leather handbag")
    assert top(searcher, "lether handbga") == expected
    capsys.readouterr()
    assert main(["search", str(out), "lether handbga", "-k", "5", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["searched_as"] == "leather handbag"
    assert [hit["id"] for hit in line["results"]] == expected

    export_runtimes(out)  # the ONNX query tower reads what the torch one reads
    onnx = Searcher(out, runtime="onnx-fp32")
    assert onnx.runtime == "onnx-fp32" and top(onnx, "lether handbga") == expected
    typed, meant = onnx.query_encoder.encode_queries(["lether handbga", "leather handbag"])
    np.testing.assert_allclose(typed, meant, atol=1e-6)
    from makevl.models.inference import MakeEncoder

    as_typed = MakeEncoder(searcher.encoder.model, correct_spelling=False)
    assert not np.allclose(as_typed.encode_queries(["lether handbga"])[0], meant, atol=1e-4)


@pytest.fixture
def checkpoint_index(tmp_path, catalog, one_thread):
    """An index built by the CLI from a tiny checkpoint: ``(index_dir, checkpoint_dir)``."""
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", catalog, seed=0)
    out = tmp_path / "built" / "index"
    command = ["index", "build", "--checkpoint", str(ckpt), "--catalog", str(catalog)]
    assert main([*command, "--out", str(out), "--quiet"]) == 0
    return out, ckpt


def test_index_is_self_contained_and_movable(tmp_path, checkpoint_index, catalog, capsys):
    from fastapi.testclient import TestClient

    from makevl.serving.app import create_app

    out, ckpt = checkpoint_index
    expected = Searcher(out).search(["red t-shirt"], k=3)[0]
    # Move the index (its link and its versions) elsewhere, delete the checkpoint.
    moved = tmp_path / "elsewhere" / "index"
    moved.parent.mkdir()
    for name in ("index", "index.versions"):
        shutil.move(out.parent / name, moved.parent / name)
    shutil.rmtree(ckpt)

    assert [h.id for h in Searcher(moved).search(["red t-shirt"], k=3)[0]] == [
        h.id for h in expected
    ]
    capsys.readouterr()
    assert main(["search", str(moved), "red t-shirt", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["id"] == expected[0].id
    with TestClient(create_app(moved)) as client:
        response = client.get("/search", params={"q": "red t-shirt", "k": 1})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["id"] == expected[0].id

    # A copy with the links resolved (cp -rL) works too, and updates carry the model along.
    copied = tmp_path / "copied"
    shutil.copytree(moved, copied)
    assert main(["index", "add", str(copied), "--catalog", str(catalog), "--quiet"]) == 0
    assert main(["search", str(copied), "red t-shirt", "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["results"][0]["id"] == (
        expected[0].id
    )


@pytest.mark.parametrize("verify", [True, False])
def test_a_tampered_model_inside_the_index_is_refused(checkpoint_index, verify):
    out, _ckpt = checkpoint_index
    weights = out / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.unlink()  # the file may be a hard link to the checkpoint's
    weights.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="model.safetensors"):
        Searcher(out, verify=verify)


def test_a_model_path_outside_the_index_is_never_followed(checkpoint_index, tmp_path):
    """A manifest naming its checkpoint by an absolute path (as older builds did) is refused,
    even when that checkpoint has the recorded weights."""
    out, ckpt = checkpoint_index
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for path in (str(ckpt.resolve()), "../../ckpt"):
        manifest["encoder"] = {"type": "checkpoint", "path": path}
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(EncoderSpecError, match="not a folder inside the index"):
            Searcher(out)
