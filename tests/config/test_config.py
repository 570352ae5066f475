from __future__ import annotations

from pathlib import Path

import pytest

from medops.config import (
    Architecture,
    MedopsConfig,
    load_config,
    parse_config,
    parse_override,
    render_template,
)
from medops.errors import ConfigError


def test_template_is_valid_and_commented(tmp_path: Path) -> None:
    text = render_template("chest-xray")
    assert "# " in text and "project: chest-xray" in text
    path = tmp_path / "medops.yaml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg == MedopsConfig(project="chest-xray")  # the template shows the real defaults


def test_defaults_locations_are_embedded() -> None:
    cfg = parse_config({"project": "p"})
    assert cfg.storage.state.startswith("sqlite:///.medops/")
    assert cfg.storage.tracking.startswith("sqlite:///.medops/")
    assert cfg.storage.artifacts.startswith(".medops/")
    assert cfg.model_name == "p-classifier"


def test_bad_enum_names_key_value_and_nearest_option() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"project": "p", "model": {"architecture": "resnet-18"}})
    msg = str(err.value)
    assert "model.architecture" in msg and "'resnet-18'" in msg and "did you mean 'resnet18'" in msg


def test_unknown_key_suggests_nearest() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"project": "p", "train": {"epoch": 3}})
    assert "train.epoch: unknown key; did you mean 'epochs'?" in str(err.value)


def test_out_of_range_value_is_reported_with_value() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"project": "p", "data": {"split": {"val": 0.6, "test": 0.5}}})
    assert "data.split" in str(err.value) and "0.6" in str(err.value)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="medops init"):
        load_config(tmp_path / "medops.yaml")
    bad = tmp_path / "medops.yaml"
    bad.write_text("project: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = tmp_path / "medops.yaml"
    path.write_text(render_template("p"))
    key, value = parse_override("train.epochs=3")
    cfg = load_config(path, {key: value, "model.architecture": "densenet121"})
    assert cfg.train.epochs == 3 and cfg.model.architecture is Architecture.DENSENET121
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(path, {"train.epochs": 0})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


def test_csv_labels_need_a_file() -> None:
    with pytest.raises(ConfigError, match=r"labels\.csv"):
        parse_config({"project": "p", "data": {"labels": {"from": "csv"}}})
