"""The training half of the lifecycle, end to end, on real DICOM files and a real MLflow store."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medops.data.manifest import load_manifest
from medops.demo.synthetic import SyntheticDataset
from medops.errors import StepFailedError
from medops.pipeline import PipelineRunner, SilentReporter
from medops.project import Project
from medops.registry import CANDIDATE, CHAMPION
from medops.storage import ItemStatus, RunStatus, StepStatus

from .conftest import AtStep, make_project

pytestmark = pytest.mark.slow


def _outputs(project: Project, run_id: str) -> dict[str, dict]:
    return {s.name: s.outputs for s in project.state.get_run(run_id).steps}


def test_run_registers_a_candidate_with_lineage(project: Project,
                                                synthetic_dicom: SyntheticDataset) -> None:
    record = PipelineRunner(project).run()
    assert record.status is RunStatus.SUCCEEDED
    assert all(s.status is StepStatus.SUCCEEDED for s in record.steps)
    out = _outputs(project, record.id)

    # Broken files are quarantined with a reason; everything else went on.
    quarantined = {Path(i.uri).name: i.reason for i in project.state.items(ItemStatus.QUARANTINED)}
    assert set(quarantined) == {p.name for p in synthetic_dicom.broken_files}
    assert all(quarantined.values())
    assert out["validate"]["ok"] == sum(synthetic_dicom.class_counts.values())

    # No patient in two splits.
    manifest = load_manifest(Path(out["split"]["manifest"]))
    assert manifest.frame.groupby("group")["split"].nunique().max() == 1
    assert manifest.version == out["split"]["dataset_version"]

    # The registered version carries its lineage and the candidate alias.
    versions = project.registry.versions()
    assert len(versions) == 1
    v = versions[0]
    assert v.aliases == [CANDIDATE]
    assert v.tags["dataset_version"] == manifest.version
    assert v.tags["approval"] == "pending" and v.tags["gate"] == "passed"
    assert float(v.tags["test_auc"]) == pytest.approx(out["evaluate"]["metrics"]["test_auc"],
                                                      abs=1e-4)
    assert "git_commit" in v.tags

    # MLflow has params, per-epoch metrics, plots and the model.
    client = project.tracker.client
    assert v.run_id is not None
    run = client.get_run(v.run_id)
    assert run.data.params["model.architecture"] == "resnet18"
    assert run.data.params["dataset_version"] == manifest.version
    history = client.get_metric_history(v.run_id, "val_auc")
    assert len(history) == out["train"]["epochs_run"]
    artifacts = {a.path for a in client.list_artifacts(v.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/roc_curves.png",
            "evaluation/metrics.json"} <= artifacts

    # The registered model loads with MLflow alone and predicts from raw DICOM bytes, exactly
    # as the pipeline's own model does.
    import mlflow.pyfunc

    model_dir = project.registry.download(v.version)
    pyfunc = mlflow.pyfunc.load_model(str(model_dir))
    test = manifest.split("test")
    blobs = [Path(u).read_bytes() for u in test["uri"][:4]]
    served = pyfunc.predict(pd.DataFrame({"image": blobs}))
    assert list(served.columns) == [f"p_{c}" for c in manifest.classes] + ["label"]
    direct = np.load(Path(out["evaluate"]["folder"]) / "test_probs.npy")[:4]
    np.testing.assert_allclose(served[[f"p_{c}" for c in manifest.classes]].to_numpy(), direct,
                               atol=1e-5)
    assert pyfunc.metadata.get_input_schema().input_names() == ["image"]

    audit = project.state.audit_log()
    assert audit[0].action == "model.registered"
    assert audit[0].target == f"{project.config.model_name}/{v.version}"


def test_unchanged_rerun_recomputes_nothing_and_gate_compares_with_champion(
        project: Project) -> None:
    first = PipelineRunner(project).run()
    out1 = _outputs(project, first.id)
    project.registry.client.set_registered_model_alias(project.config.model_name, CHAMPION, "1")

    second = PipelineRunner(project).run()
    out2 = _outputs(project, second.id)
    assert out2["ingest"]["new"] == 0 and out2["validate"]["checked"] == 0
    assert out2["split"]["dataset_version"] == out1["split"]["dataset_version"]
    assert out2["preprocess"]["computed"] == 0
    assert out2["train"]["resumed_from_epoch"] is not None  # the finished checkpoint is reused
    assert out2["train"]["checkpoint"] == out1["train"]["checkpoint"]
    assert out2["train"]["checkpoints_removed"] == 0 and Path(out2["train"]["checkpoint"]).is_dir()

    # Same model, same test split: it cannot beat the champion, so nothing is registered.
    assert out2["gate"]["passed"] is False
    assert out2["gate"]["champion_version"] == "1"
    assert out2["gate"]["champion_value"] == pytest.approx(out2["gate"]["value"])
    assert out2["register"] == {"registered": False, "reasons": out2["gate"]["reasons"]}
    assert len(project.registry.versions()) == 1
    assert project.state.audit_log()[0].action == "model.gate_failed"


def test_mlflow_shows_a_failed_run_as_failed_and_a_resumed_one_as_running(
        project: Project, tmp_path: Path) -> None:
    keep = tmp_path / "weights.pt"
    failing = make_project(project.root, **{"pipeline.retries.attempts": 1})

    def lose_the_weights() -> None:  # as a lost disk would, when evaluate starts
        run = failing.state.list_runs()[0]
        Path(next(s for s in run.steps if s.name == "train").outputs["weights"]).rename(keep)

    with pytest.raises(StepFailedError):
        PipelineRunner(failing, AtStep("evaluate", lose_the_weights)).run()
    record = project.state.list_runs()[0]
    assert record.status is RunStatus.FAILED and record.mlflow_run_id is not None
    mlrun: str = record.mlflow_run_id
    client = project.tracker.client
    assert client.get_run(mlrun).info.status == "FAILED"  # it used to stay RUNNING forever

    weights = Path(_outputs(project, record.id)["train"]["weights"])
    keep.rename(weights)  # the disk is back
    seen: list[str] = []

    class _Watch(SilentReporter):
        def step_started(self, step: str, attempt: int) -> None:
            seen.append(client.get_run(mlrun).info.status)

    assert PipelineRunner(project, _Watch()).resume(record.id).status is RunStatus.SUCCEEDED
    assert seen[0] == "RUNNING"
    assert client.get_run(mlrun).info.status == "FINISHED"


def test_failing_step_is_retried_then_the_run_fails_with_the_error(project: Project) -> None:
    (project.root / "not-a-dir").write_text("a file where MLflow wants a folder")
    broken = make_project(project.root, **{
        "storage.tracking": "sqlite:///not-a-dir/mlflow.db", "pipeline.retries.attempts": 2})
    with pytest.raises(StepFailedError) as err:
        PipelineRunner(broken).run()
    assert err.value.step == "train" and err.value.attempts == 2
    record = broken.state.list_runs()[0]
    assert record.status is RunStatus.FAILED and "train" in (record.error or "")
    train = next(s for s in record.steps if s.name == "train")
    assert train.status is StepStatus.FAILED and train.attempts == 2 and train.error

    # Fix the configuration and resume: finished steps are not run again.
    fixed = make_project(project.root)
    resumed = PipelineRunner(fixed).resume(record.id)
    assert resumed.status is RunStatus.SUCCEEDED
    steps = {s.name: s for s in resumed.steps}
    assert steps["ingest"].attempts == 1 and steps["train"].attempts == 3


def test_bad_data_fails_fast_without_retries(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "one-class"
    Project.init(root)
    folder = root / "data" / "raw" / "only"
    folder.mkdir(parents=True)
    for i in range(3):
        buf = io.BytesIO()
        Image.fromarray(np.full((16, 16), i * 40, dtype=np.uint8)).save(buf, format="PNG")
        (folder / f"{i}.png").write_bytes(buf.getvalue())
    proj = make_project(root)
    with pytest.raises(StepFailedError, match="at least 2 classes") as err:
        PipelineRunner(proj).run()
    assert err.value.step == "validate" and err.value.attempts == 1
