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
