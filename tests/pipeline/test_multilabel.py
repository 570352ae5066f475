"""A multi-label model through the model half of the pipeline, on synthetic multi-label DICOM
and a real MLflow store: per-finding metrics, thresholds chosen on validation and registered
with the model, the gate on the macro AUC, on a named finding against the champion, and a
finding that does not exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medops.demo.multilabel import MultilabelDataset, write_multilabel_dataset
from medops.errors import StepFailedError
from medops.evaluate import MultiLabelMetrics
from medops.pipeline import PipelineRunner
from medops.project import Project
from medops.registry import CHAMPION
from medops.storage import RunStatus

from .conftest import make_project

pytestmark = pytest.mark.slow

FINDINGS = ("Effusion", "Cardiomegaly", "Nodule")


@pytest.fixture(scope="module")
def multilabel_dicom(tmp_path_factory: pytest.TempPathFactory) -> MultilabelDataset:
    return write_multilabel_dataset(tmp_path_factory.mktemp("multilabel"), n_patients=24,
                                    images_per_patient=3, size=32, findings=FINDINGS)


def _project(root: Path, data: MultilabelDataset, **overrides: Any) -> Project:
    if not root.exists():
        Project.init(root, name="ml-project")
        shutil.rmtree(root / "data" / "raw")
        shutil.copytree(data.root, root / "data" / "raw")
    labels = {**data.labels_config("nih"), "csv": str(root / "data" / "raw" / "labels.csv")}
    return make_project(root, **{"task": "multilabel", "data.source.path": "data/raw/images",
                                 "data.labels": labels, "gate.metric": "macro_auc",
                                 **overrides})


def _outputs(project: Project, run_id: str) -> dict[str, dict[str, Any]]:
    return {s.name: s.outputs for s in project.state.get_run(run_id).steps}


def test_multilabel_run_registers_thresholds_and_gates_on_findings(
        tmp_path: Path, multilabel_dicom: MultilabelDataset) -> None:
    root = tmp_path / "proj"
    project = _project(root, multilabel_dicom)
    record = PipelineRunner(project).run()
    assert record.status is RunStatus.SUCCEEDED
    out = _outputs(project, record.id)
    findings = sorted(FINDINGS)
    assert out["split"]["classes"] == findings

    # per-finding metrics, macro and micro AUC; thresholds chosen on validation, in [0, 1]
    folder = Path(out["evaluate"]["folder"])
    thresholds = json.loads((folder / "thresholds.json").read_text())
    assert list(thresholds) == findings and all(0 <= t <= 1 for t in thresholds.values())
    assert out["evaluate"]["thresholds"] == thresholds
    metrics = MultiLabelMetrics.from_dict(json.loads((folder / "metrics.json").read_text()))
    assert metrics.thresholds == thresholds and metrics.class_names == findings
    flat = out["evaluate"]["metrics"]
    assert flat["test_macro_auc"] == flat["test_auc"] == pytest.approx(metrics.macro_auc)
    assert {"test_micro_auc", "test_auc_Effusion", "test_f1_Nodule",
            "test_threshold_Cardiomegaly"} <= set(flat)
    assert (folder / "roc_curves.png").is_file() and (folder / "finding_confusion.png").is_file()
    assert not (folder / "confusion_matrix.png").exists()
    probs = np.load(folder / "test_probs.npy")
    assert probs.shape == (metrics.n, 3)

    # the gate read the macro AUC; the registered model carries the thresholds
    assert out["gate"]["metric"] == "macro_auc" and out["gate"]["passed"]
    assert out["gate"]["value"] == pytest.approx(flat["test_macro_auc"])
    [version] = project.registry.versions()
    assert version.tags["gate_metric"] == "macro_auc"
    assert float(version.tags["test_macro_auc"]) == pytest.approx(flat["test_macro_auc"],
                                                                  abs=1e-4)
    loaded = project.registry.load(version.version)
    assert loaded.classes == findings
    assert loaded.thresholds == pytest.approx([thresholds[f] for f in findings])
    client = project.tracker.client
    assert version.run_id is not None
    logged = client.get_run(version.run_id).data.metrics
    assert logged["test_macro_auc"] == pytest.approx(flat["test_macro_auc"])
    assert len(client.get_metric_history(version.run_id, "val_auc")) == out["train"]["epochs_run"]

    # the same model against itself as champion, on one finding's AUC: scored alike, so it
    # does not beat it (the champion is scored with its own stored thresholds)
    client.set_registered_model_alias(project.config.model_name, CHAMPION, version.version)
    on_finding = _project(root, multilabel_dicom,
                          **{"gate.metric": "auc", "gate.finding": "Effusion"})
    second = PipelineRunner(on_finding).run()
    gate = _outputs(on_finding, second.id)["gate"]
    assert gate["metric"] == "auc_Effusion"
    assert gate["value"] == pytest.approx(flat["test_auc_Effusion"])
    assert gate["champion_version"] == version.version
    assert gate["champion_value"] == pytest.approx(gate["value"], abs=1e-5)
    assert not gate["passed"] and "does not beat champion" in " ".join(gate["reasons"])

    # a finding the data set does not have fails before training, with the fix, unretried
    typo = _project(root, multilabel_dicom, **{"gate.metric": "auc", "gate.finding": "Efusion"})
    with pytest.raises(StepFailedError, match="did you mean 'Effusion'") as err:
        PipelineRunner(typo).run()
    assert err.value.step == "train" and err.value.attempts == 1
