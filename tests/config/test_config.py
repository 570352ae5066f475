from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from medops.config import (
    Architecture,
    MedopsConfig,
    load_config,
    parse_config,
    parse_override,
    render_template,
)
from medops.config.sources import DicomwebSourceConfig
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


@pytest.mark.parametrize(("section", "value"), [("preprocess", {"size": [2, 2]}),
                                              ("monitor", {"window": "0x"})])
def test_a_validator_naming_the_value_is_not_repeated(section: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"project": "p", section: value})
    msg = str(err.value)
    assert "Value error" not in msg
    assert msg.count("[2, 2]") + msg.count("'0x'") == 1, msg


def test_a_bad_override_is_named_and_the_file_is_not_blamed(tmp_path: Path) -> None:
    path = tmp_path / "medops.yaml"
    path.write_text(render_template("p"))
    with pytest.raises(ConfigError) as err:
        load_config(path, dict([parse_override("train.epochs=abc")]))
    assert str(err.value).startswith("--set train.epochs=abc: ") and str(path) not in str(err.value)
    path.write_text(render_template("p") + "gate: {min: 2}\n")
    with pytest.raises(ConfigError) as err:  # both wrong: each named where it comes from
        load_config(path, {"train.epochs": 0})
    msg = str(err.value)
    assert msg.startswith(f"{path} (with the --set overrides) is invalid")
    assert "\n  gate.min: " in msg and "\n  --set train.epochs=0: " in msg


def test_template_quotes_names_yaml_would_read_otherwise() -> None:
    for name in ("true", "1.0", "null", "chest-xray"):
        assert parse_config(yaml.safe_load(render_template(name))).project == name


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
    assert cfg.train.epochs == 3 and cfg.model.architecture == Architecture.DENSENET121.value
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        load_config(path, {"train.epochs": 0})
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("train.epochs")


def test_csv_labels_need_a_file() -> None:
    with pytest.raises(ConfigError, match=r"labels\.csv"):
        parse_config({"project": "p", "data": {"labels": {"from": "csv"}}})


@pytest.mark.parametrize(("source", "key"), [
    ({"kind": "dicomweb", "url": "not-a-url"}, "url"),
    ({"kind": "dicomweb", "url": "ftp://pacs/dicom-web"}, "url"),
    ({"kind": "dicomweb", "url": "http://"}, "url"),
    ({"kind": "dicomweb", "url": "http://pacs:port/dicom-web"}, "url"),
    ({"kind": "dicomweb", "url": "http://[::1/dicom-web"}, "url"),
    ({"kind": "dicomweb", "url": "http://pacs/dicom-web", "orthanc_url": "pacs:8042"},
     "orthanc_url"),
    ({"kind": "xnat", "url": "xnat.example.org", "project": "P"}, "url"),
])
def test_source_urls_must_be_http_with_a_host(tmp_path: Path, source: dict[str, str],
                                              key: str) -> None:
    path = tmp_path / "medops.yaml"
    path.write_text(yaml.safe_dump({"project": "p", "data": {"sources": {"web": source}}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = " ".join(str(err.value).split())
    assert "data.sources.web" in msg and f".{key}:" in msg and repr(source[key]) in msg
    assert "is not an http(s) URL with a host" in msg


def test_good_source_urls_load() -> None:
    cfg = parse_config({"project": "p", "data": {"sources": {
        "web": {"kind": "dicomweb", "url": "https://pacs.example.org:8443/dicom-web",
                "orthanc_url": "http://10.0.0.5:8042"}}}})
    web = cfg.data.sources["web"]
    assert isinstance(web, DicomwebSourceConfig)
    assert web.url == "https://pacs.example.org:8443/dicom-web"
