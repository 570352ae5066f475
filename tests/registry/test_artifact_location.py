"""Where a project's MLflow experiment keeps its artifacts: beside the local artifact root, in
the object store when the root is ``s3://`` (MLflow writing through boto3 to moto's server),
and wherever an MLflow server decides when tracking is remote."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from medops.project import Project
from tests.servers.moto import s3_bucket

pytest.importorskip("boto3")


@pytest.fixture
def s3_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, object]]:
    """A bucket on moto's server, reached through boto3's own variables only."""
    with s3_bucket(monkeypatch, tmp_path, "artifacts") as found:
        yield found


def _project(root: Path, **storage: str) -> Project:
    Project.init(root, name="located")
    return Project.load(root, {f"storage.{k}": v for k, v in storage.items()})


def test_local_tracking_with_an_s3_root_keeps_mlflow_artifacts_in_the_bucket(
        s3_root: tuple[str, object], tmp_path: Path) -> None:
    bucket, client = s3_root
    project = _project(tmp_path / "p", artifacts=f"s3://{bucket}/team/chest")
    tracker = project.tracker
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location == f"s3://{bucket}/team/chest/mlflow"
    run = tracker.start_run("r", {})
    (tmp_path / "note.txt").write_text("evaluation")
    tracker.log_artifact(run, tmp_path / "note.txt", "evaluation")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]  # type: ignore[attr-defined]
    assert keys == [f"team/chest/mlflow/{run}/artifacts/evaluation/note.txt"]
    assert not (project.artifacts / "mlflow").exists()  # nothing of MLflow's in the cache
    project.close()


def test_each_kind_of_tracking_gets_its_own_location(tmp_path: Path) -> None:
    local = _project(tmp_path / "local")
    assert local._mlflow_artifacts("sqlite:///x.db") == local.artifacts / "mlflow"
    remote = _project(tmp_path / "remote", artifacts="s3://b/p/")
    assert remote._mlflow_artifacts("sqlite:///x.db") == "s3://b/p/mlflow"
    assert remote._mlflow_artifacts("https://mlflow.example.org") is None  # the server's
    assert local._mlflow_artifacts("http://127.0.0.1:5000") is None
