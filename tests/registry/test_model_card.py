"""The model card: built from a run's step outputs and medops.yaml, written as JSON and
Markdown, read back; and the one the real pipeline logged with its version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medops.config import MedopsConfig, parse_config
from medops.errors import ConfigError, NotFoundError, RegistryError
from medops.registry.browse import RunFiles
from medops.registry.model_card import CARD_JSON, CARD_MARKDOWN, ModelCard, build_card

from ..conftest import TrainedProject

OUTPUTS: dict[str, dict[str, Any]] = {
    "split": {"dataset_version": "ds-abc", "classes": ["normal", "nodule"],
              "counts": {"train": {"normal": 60, "nodule": 40}, "val": {"normal": 20,
                                                                      "nodule": 12},
                         "test": {"normal": 25, "nodule": 9}},
              "missing_findings": {}},
    "preprocess": {"profile": {"size": [32, 32], "channels": 1, "window": "auto"}},
    "train": {"spec": {"architecture": "resnet18", "in_channels": 1, "origin": {},
                       "args": {}}, "weights": None, "epochs_run": 3, "best_epoch": 2,
              "init_weights": None},
    "evaluate": {"metrics": {"test_auc": 0.91, "test_auc_nodule": None}},
    "gate": {"passed": True, "metric": "auc", "value": 0.91, "threshold": 0.75,
             "reasons": ["auc 0.910 >= 0.750"]},
}


def _config(card: dict[str, object] | None = None) -> MedopsConfig:
    data: dict[str, object] = {"project": "cards"}
    if card is not None:
        data["registry"] = {"card": card}
    return parse_config(data)


def test_a_card_joins_what_people_wrote_with_what_the_run_measured(tmp_path: Path) -> None:
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    outputs = {**OUTPUTS, "train": {**OUTPUTS["train"], "weights": str(weights)}}
    config = _config({"intended_use": "triage research", "limitations": ["one site"],
                      "authors": ["radiology AI"]})
    card = build_card(config, outputs, name="cards-classifier", version="3", run_id="run-1",
                      mlflow_run_id="abc123", lineage={"git_commit": "deadbeef+dirty"})
    assert card.intended_use == "triage research" and card.limitations == ["one site"]
    assert card.weights_sha256 is not None and len(card.weights_sha256) == 64
    assert card.metrics == {"test_auc": 0.91, "test_auc_nodule": None}
    assert card.data["counts"]["test"] == {"normal": 25, "nodule": 9}
    assert card.network_data_format["outputs"]["pred"]["channel_def"] == {0: "normal",
                                                                          1: "nodule"}
    derived = " ".join(card.derived_limitations)
    assert "fewer than 20 test images of nodule" in derived
    assert "undefined on the test split" in derived and "test_auc_nodule" in derived
    assert "uncommitted changes" in derived

    folder = card.write(tmp_path / "card")
    text = (folder / CARD_MARKDOWN).read_text()
    assert text.startswith("# Model card: cards-classifier v3")
    assert "| nodule | 40 | 12 | 9 |" in text and "| test_auc | 0.9100 |" in text
    assert "triage research" in text and "Gate: passed" in text
    again = ModelCard.from_json((folder / CARD_JSON).read_text())
    assert again.to_dict() == json.loads(card.to_json())


def test_a_card_without_stated_use_says_so() -> None:
    card = build_card(_config(), OUTPUTS, name="m", version="1", run_id="r", mlflow_run_id="x",
                      lineage={"git_commit": "unknown"})
    assert card.intended_use is None and card.weights_sha256 is None
    assert "not stated (set registry.card in medops.yaml)" in card.to_markdown()
    assert any("not a git repository" in x for x in card.derived_limitations)


def test_unknown_card_keys_in_medops_yaml_are_refused() -> None:
    with pytest.raises(ConfigError, match="intended_uses"):
        _config({"intended_uses": "typo"})


def test_what_is_not_a_card_is_an_error_naming_it() -> None:
    with pytest.raises(RegistryError, match="not JSON"):
        ModelCard.from_json("{nope")
    with pytest.raises(RegistryError, match="not a medops model card"):
        ModelCard.from_json('{"name": "x"}')


@pytest.mark.slow
def test_the_pipeline_logs_a_card_with_each_registered_version(
        trained_project: TrainedProject, tmp_path: Path) -> None:
    project = trained_project.project
    v1 = project.registry.get("1")
    assert v1.run_id is not None and v1.tags["model_card"] == f"model_card/{CARD_JSON}"
    card = RunFiles(project.tracker.client, tmp_path).model_card(v1.run_id)
    assert card is not None and card.name == project.config.model_name and card.version == "1"
    assert card.weights_sha256 == v1.tags["weights_sha256"]
    assert card.lineage["run_id"] == v1.tags["medops_run_id"]
    assert sum(card.data["counts"]["test"].values()) > 0
    # a path out of the run's artifacts is refused before MLflow is asked
    with pytest.raises(NotFoundError, match="not an artifact path"):
        RunFiles(project.tracker.client, tmp_path).fetch(v1.run_id, "../../etc/passwd")
