"""Every reader inherits the catalog checks: index build skips escaping images, train refuses
a catalog an unclosed quote has cut short."""

from __future__ import annotations

from pathlib import Path

from data.bad_inputs import catalog_with_escaping_images, runaway_catalog
from makevl.cli import main
from makevl.index.store import read_manifest


def test_index_build_skips_images_outside_the_catalog_folder(tmp_path: Path, capsys):
    catalog = catalog_with_escaping_images(tmp_path)
    out = tmp_path / "index"
    assert main(["index", "build", "--hashing-encoder", "16", "--catalog", str(catalog),
                 "--out", str(out), "--quiet"]) == 0
    assert read_manifest(out)["count"] == 3
    text = capsys.readouterr().out
    assert "skipped 5" in text and f"{catalog}:5 [image]: /etc/passwd" in text


def test_train_refuses_a_catalog_cut_short_by_an_unclosed_quote(tmp_path: Path, capsys):
    catalog = runaway_catalog(tmp_path, opened_at=252)
    queries = tmp_path / "queries.csv"
    queries.write_text("query,product_id\n" + "".join(f"title,p{i}\n" for i in range(2, 502)))
    code = main(["train", "--config", "demo-tiny", "data.preset=custom",
                 f"data.catalog={catalog}", f"data.queries={queries}",
                 f"train.out_dir={tmp_path / 'run'}"])
    assert code == 1
    assert f"{catalog}:252: unclosed quote in field 'title'" in capsys.readouterr().err
