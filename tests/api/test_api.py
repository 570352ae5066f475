"""The Python API on a real project: real DICOM, the real pipeline, a real MLflow registry."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import medops
from medops.api import ImportResult, ModelVersion, RunResult, Session
from medops.config import Step
from medops.demo.synthetic import SyntheticDataset, make_synthetic_dataset
from medops.errors import ConfigError, DataError, NotFoundError
from medops.storage import RunStatus, StepStatus
from tests.pipeline.conftest import FAST


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "raw", n_patients=12,
                                  images_per_patient=3, size=48)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory,
            dataset: SyntheticDataset) -> Iterator[Session]:
    root = tmp_path_factory.mktemp("api") / "proj"
    with medops.init_project(root, name="api-project") as created:
        assert created.root == root.resolve()
    shutil.rmtree(root / "data" / "raw")
    shutil.copytree(dataset.root, root / "data" / "raw")
    with medops.open_project(root, overrides={**FAST, "train.epochs": 1}) as opened:
        yield opened


def test_overrides_hold_for_the_session_not_the_file(session: Session) -> None:
    assert session.config.train.epochs == 1 and session.config.preprocess.size == (32, 32)
    assert "epochs: 1\n" not in (session.root / "medops.yaml").read_text()
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        medops.open_project(session.root, overrides={"train.epoch": 2})
    with pytest.raises(ConfigError, match="medops init"):
        medops.open_project(session.root.parent / "nowhere")


@pytest.mark.slow
def test_a_run_up_to_a_step_then_the_whole_pipeline(session: Session) -> None:
    with pytest.raises(ConfigError, match="did you mean 'evaluate'"):
        session.run(until="evalute")

    split = session.run(until="split")
    assert isinstance(split, RunResult) and split.succeeded and split.trigger == "python"
    assert [s.name for s in split.steps] == [s.value for s in Step]
    assert split.step(Step.SPLIT).status is StepStatus.SUCCEEDED
    assert split.step("train").status is StepStatus.PENDING
    assert split.dataset_version and split.dataset_version.startswith("ds-")
    assert split.metrics == {} and split.gate is None and split.model_version is None

    run = session.run()
    assert run.status is RunStatus.SUCCEEDED and run.error is None
    assert run.model_version == "1" and run.gate is not None and run.gate.passed
    assert 0.0 <= run.metrics["test_auc"] <= 1.0 and "test_accuracy" in run.metrics
    assert run.step("train").outputs["epochs_run"] == 1
    assert all(s.seconds is not None and s.seconds >= 0 for s in run.steps)

    # runs: newest first; one by id or by the start of it
    listed = session.runs()
    assert [r.id for r in listed[:2]] == [run.id, split.id]
    assert session.get_run(run.id[:-2]) == run
    with pytest.raises(NotFoundError):
        session.get_run("run-19990101")

    metrics = session.metrics(run.id)
    assert metrics.test == run.metrics
    assert [step for step, _ in metrics.history["train_loss"]] == [1]  # one epoch
    assert metrics.last("val_auc") == metrics.history["val_auc"][-1][1]
    assert math.isclose(metrics.last("test_auc"), run.metrics["test_auc"], rel_tol=1e-9)
    with pytest.raises(NotFoundError, match="did you mean 'val_auc'"):
        metrics.last("val_auk")
    assert session.metrics(split.id).history == {}  # stopped before training: no MLflow run


@pytest.mark.slow
def test_versions_sign_off_and_predictions(session: Session,
                                           dataset: SyntheticDataset) -> None:
    run = next((r for r in session.runs() if r.model_version), None) or session.run()
    assert run.model_version is not None
    version = session.model_version(run.model_version)
    assert isinstance(version, ModelVersion)
    assert version.name == session.config.model_name == "api-project-classifier"
    assert version.approval == "pending" and not version.live
    assert "candidate" in version.aliases and "champion" not in version.aliases
    assert version.run_id == run.id and version.mlflow_run_id == run.mlflow_run_id
    assert version.metrics["test_auc"] == pytest.approx(run.metrics["test_auc"], abs=1e-4)
    assert version.tags["gate"] == "passed"
    assert session.model_version() == version  # the newest
    assert session.model_versions()[0] == version
    with pytest.raises(NotFoundError, match="champion"):
        session.model_version(alias="champion")
    with pytest.raises(NotFoundError, match="no version '99'"):
        session.model_version(99)
    with pytest.raises(NotFoundError, match="no registered model named 'other'"):
        session.model_versions("other")

    with pytest.raises(ConfigError, match="--note"):
        session.approve(version.version, by="Dr. Lee", note=" ")
    live = session.approve(version.version, by="Dr. Lee", note="reviewed")
    assert live.live and live.approval == "approved" and "champion" in live.aliases
    assert live.tags["approved_by"] == "Dr. Lee"
    assert session.model_version(alias="champion").version == version.version
    assert [d.actor for d in session.lifecycle().history()] == ["Dr. Lee"]

    files = [img.path for img in dataset.images[:3]]
    predictions = session.predict(files)
    loaded = session.project.registry.load(version.version)
    expected = loaded.predict_images([f.read_bytes() for f in files])
    assert [p.file for p in predictions] == [str(f.resolve()) for f in files]
    for p, probs in zip(predictions, expected, strict=True):
        assert list(p.probabilities) == loaded.classes
        np.testing.assert_allclose(list(p.probabilities.values()), probs, atol=1e-5)
        assert p.label == loaded.classes[int(np.argmax(probs))]
        assert (p.model, p.version) == (version.name, version.version)
    same = session.predict(files[:1], model=f"{version.name}/{version.version}")
    assert same[0].probabilities == predictions[0].probabilities

    junk = session.root / "notes.png"
    junk.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.png"):
        session.predict([files[0], junk])


def test_import_data_reports_what_it_added(tmp_path: Path) -> None:
    from tests.samples import pydicom_file

    folder = tmp_path / "scans" / "normal"
    folder.mkdir(parents=True)
    shutil.copy(pydicom_file("CT_small.dcm"), folder / "ct.dcm")
    with medops.init_project(tmp_path / "p") as session:
        found = session.import_data(tmp_path / "scans")
        assert found == ImportResult(source=f"folder:{(tmp_path / 'scans').resolve()}",
                                     items=1, new=1, changed=0, quarantined=0, skipped={})
        assert session.import_data(str(tmp_path / "scans")).new == 0
        with pytest.raises(ConfigError, match="does not exist"):
            session.import_data(tmp_path / "missing.npz")
        assert session.runs() == []
        with pytest.raises(NotFoundError, match="a run registers one"):
            session.model_version()
