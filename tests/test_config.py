from pathlib import Path

import pytest

from makevl.config import ConfigError, RunConfig, load_config


def test_yaml_then_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 0.01\n  batch_size: 8\nmodel:\n  text_backbone: minilm\n")
    cfg = load_config(path, ["train.lr=1e-3", "model.modal_adaptation=false", "data.catalog=null"])
    assert cfg.train.lr == 1e-3 and cfg.train.batch_size == 8
    assert cfg.model.text_backbone == "minilm" and cfg.model.modal_adaptation is False
    assert cfg.data.catalog is None


def test_round_trip_through_yaml(tmp_path: Path):
    cfg = load_config(None, ["data.preset=fashion-mini", "loss.title_image=0.1"])
    cfg.save(tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.lr=-1"], "train.lr"),
        (["train.lrr=1"], "train.lrr"),
        (["data.preset=amazon"], "data.preset"),
        (["nonsense"], "section.key=value"),
        (["train.lr.x=1"], "train.lr"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_missing_and_invalid_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_defaults_are_valid():
    assert RunConfig().model.embed_dim > 0


def test_bundled_configs_load_by_name_as_package_resources(tmp_path: Path, monkeypatch):
    from makevl.config import bundled_config, bundled_config_names, resolve_config

    monkeypatch.chdir(tmp_path)  # nothing may depend on the source checkout's layout
    assert bundled_config_names() == ["demo-pretrained", "demo-tiny", "fashion-mini"]
    cfg = bundled_config("demo-tiny", ["train.epochs=4"])
    assert cfg.train.out_dir == "runs/demo-tiny" and cfg.train.epochs == 4
    assert resolve_config("demo-tiny.yaml") == bundled_config("demo-tiny")
    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 7\n")
    assert resolve_config("mine.yaml").train.epochs == 7


def test_an_unknown_config_name_is_an_error_listing_the_bundled_ones():
    from makevl.config import bundled_config, resolve_config

    with pytest.raises(ConfigError, match="demo-pretrained, demo-tiny, fashion-mini"):
        bundled_config("demo-tyni")
    with pytest.raises(ConfigError, match="config file not found: nope.yaml"):
        resolve_config("nope.yaml")
