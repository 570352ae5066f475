"""The data half of a multi-label run on synthetic DICOM: findings from an NIH-format or a
0/1-column CSV, per-finding validation counts, a patient-grouped split that spreads every
finding, and a manifest with multi-hot targets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medops.config.enums import Step, Task
from medops.data.manifest import load_manifest
from medops.demo.multilabel import FINDINGS, MultilabelDataset
from medops.demo.synthetic import write_multilabel_dataset
from medops.errors import StepFailedError
from medops.pipeline import PipelineRunner, SilentReporter
from medops.storage import RunStatus

from .conftest import make_project

pytestmark = pytest.mark.slow


class Messages(SilentReporter):
    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def message(self, step: str, text: str) -> None:
        self.texts.append((step, text))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> MultilabelDataset:
    # Consolidation is rare on purpose: too few patients have it to reach every split.
    return write_multilabel_dataset(tmp_path_factory.mktemp("ml") / "set", n_patients=24,
                                    images_per_patient=3, size=32, findings=FINDINGS,
                                    prevalence={"Consolidation": 0.01}, seed=3)


def _overrides(dataset: MultilabelDataset, fmt: str) -> dict[str, Any]:
    return {"task": "multilabel", "data.source.path": str(dataset.images_dir),
            "data.labels": dataset.labels_config(fmt)}


@pytest.mark.parametrize("fmt", ["nih", "columns"])
def test_split_writes_findings_and_multi_hot_targets(tmp_path: Path, dataset: MultilabelDataset,
                                                     fmt: str) -> None:
    project = make_project(tmp_path / "proj", **_overrides(dataset, fmt))
    messages = Messages()
    record = PipelineRunner(project, messages).run(until=Step.SPLIT)
    assert record.status is RunStatus.SUCCEEDED
    out = {s.name: s.outputs for s in project.state.get_run(record.id).steps}

    positives = dataset.positives()
    assert out["validate"]["class_counts"] == {
        **{f: positives[f] for f in sorted(FINDINGS)},
        "No Finding": sum(not im.findings for im in dataset.images)}
    split = out["split"]
    assert split["task"] == "multilabel" and split["classes"] == sorted(FINDINGS)

    manifest = load_manifest(Path(split["manifest"]))
    assert manifest.task is Task.MULTILABEL and manifest.classes == sorted(FINDINGS)
    assert manifest.frame.groupby("group")["split"].nunique().max() == 1  # patients whole
    truth = {str(im.path): im.findings for im in dataset.images}
    for name in ("train", "val", "test"):
        y = manifest.targets(name)
        rows = manifest.split(name)
        assert y.dtype == np.float32 and y.shape == (len(rows), len(FINDINGS))
        expected = [[float(f in truth[uri]) for f in manifest.classes] for uri in rows["uri"]]
        np.testing.assert_array_equal(y, expected)
    # Common findings are in every split; the rare one is reported where it is missing.
    missing = split["missing_findings"]
    assert missing and all(found == ["Consolidation"] for found in missing.values())
    assert all(split["counts"][s][f] > 0 for s in ("train", "val", "test")
               for f in ("Cardiomegaly", "Effusion", "Nodule"))
    assert [t for step, t in messages.texts if step == "split"] == [
        f"the {s} split has no positive image of Consolidation: too few patients with these "
        "findings to place one in every split" for s in missing]


def test_folder_name_labels_stop_a_multilabel_run_with_the_fix(tmp_path: Path,
                                                               dataset: MultilabelDataset) -> None:
    overrides = _overrides(dataset, "nih")
    overrides["data.labels"] = {"from": "folder-names"}
    project = make_project(tmp_path / "proj", **overrides)
    with pytest.raises(StepFailedError, match="folder name gives one class per image"):
        PipelineRunner(project).run(until=Step.SPLIT)
