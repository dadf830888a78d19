from pathlib import Path

from makevl.cli import main


def test_stats_on_a_mistyped_demo_catalog_exits_2_without_writing(tmp_path: Path, capsys):
    typo = tmp_path / "shpo" / "catalog.csv"
    assert main(["data", "stats", "data.preset=demo", f"data.catalog={typo}"]) == 2
    err = capsys.readouterr().err
    assert str(typo) in err and "Traceback" not in err
    assert not typo.parent.exists()


def test_stats_on_a_bad_override_exits_2(capsys):
    assert main(["data", "stats", "data.preset=nonsense"]) == 2
    assert "data.preset" in capsys.readouterr().err


def test_stats_counts_categories_by_the_presets_attribute(small_catalog: Path, capsys):
    assert main(["data", "stats", "data.preset=demo", f"data.catalog={small_catalog}"]) == 0
    assert "categories: " in capsys.readouterr().out


def test_validate_maps_columns_with_repeated_column(tmp_path: Path, capsys):
    catalog = tmp_path / "styles.csv"
    catalog.write_text("sku,name\nA1,Orange wool beanie\nA2,Black rain jacket\n")
    args = ["data", "validate", str(catalog), "--column", "id=sku", "--column", "title=name",
            "--column", "image=", "--column", "keywords=", "--json"]
    assert main(args) == 1  # the rows are read through the mapping; they only lack images
    out = capsys.readouterr().out
    assert '"product_id": "A1"' in out and "no image reference" in out
    assert main(["data", "validate", str(catalog), "--column", "colour=x"]) == 2
    assert "unknown field 'colour'" in capsys.readouterr().err


def test_demo_with_an_unknown_config_exits_2_before_training(tmp_path: Path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--products", "20",
                 "--config", "demo-tyni"])
    assert code == 2
    assert "demo-tiny" in capsys.readouterr().err  # the message lists the bundled configs
    assert not (tmp_path / "demo").exists()  # it failed before writing anything


def test_unseen_phrasing_on_a_preset_without_it_exits_2(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--preset", "demo", "--unseen-phrasing"]) == 2
    assert "no unseen-phrasing condition" in capsys.readouterr().err
    assert main(["eval", "--preset", "demo", "--unseen-phrasing"]) == 2
    assert "no unseen-phrasing condition" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


def test_report_conditions_name_the_output_folder(monkeypatch, capsys):
    from makevl.evaluation import report

    calls = []

    def fake_run_report(preset, out, overrides, **_):
        calls.append((out, overrides))
        return {"seconds": 0.0, "claims": []}

    monkeypatch.setattr(report, "run_report", fake_run_report)
    assert main(["report", "--preset", "fashion-mini", "--sparse-titles", "--unseen-phrasing",
                 "train.lr=1e-4"]) == 0
    assert calls == [("reports/fashion-mini-sparse-titles-unseen-phrasing",
                      ["train.lr=1e-4", "data.sparse_titles=true", "data.unseen_phrasing=true"])]
