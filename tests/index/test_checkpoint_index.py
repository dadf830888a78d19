"""End to end with a real (tiny, untrained) MAKE checkpoint: build, search, refuse other weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import TINY_MODEL_OVERRIDES
from makevl.cli import main
from makevl.config import load_config
from makevl.index.encoders import checkpoint_hash
from makevl.index.search import Searcher
from makevl.index.store import ModelMismatchError, read_manifest


def save_tiny_checkpoint(directory, catalog, seed: int):
    from makevl.data.shop import read_catalog
    from makevl.keywords import build_vocabulary
    from makevl.models.checkpoint import save_checkpoint
    from makevl.models.make import MakeModel

    cfg = load_config(
        None,
        [
            "data.preset=custom",
            f"data.catalog={catalog}",
            f"data.queries={catalog}",
            *TINY_MODEL_OVERRIDES,
        ],
    )
    products, _ = read_catalog(catalog)
    vocab = build_vocabulary(products)
    torch.manual_seed(seed)
    model = MakeModel.from_config(cfg, num_keywords=len(vocab))
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
    assert manifest["encoder"] == {"type": "checkpoint", "path": str(ckpt.resolve())}
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

    # Retrained in place: same path, other weights. The old index is refused.
    save_tiny_checkpoint(tmp_path / "ckpt", catalog, seed=1)
    with pytest.raises(ModelMismatchError, match="was built with model"):
        Searcher(out)
    assert main(["search", str(out), "red t-shirt"]) == 1
    assert "Rebuild the index" in capsys.readouterr().err
