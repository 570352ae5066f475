"""The MLflow server restarts in the middle of a run: the run waits for it (the tracking
client retries with backoff) and finishes, with one MLflow run and one registered version —
nothing lost, nothing twice."""

from __future__ import annotations

import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from medops.demo.synthetic import make_synthetic_dataset
from medops.project import Project
from medops.storage import RunStatus, StepStatus
from tests.agent.conftest import MEDOPS, make_agent_project
from tests.conftest import _postgres_database
from tests.servers.mlflow import moto_s3, running_mlflow

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


def test_a_run_survives_a_restart_of_the_mlflow_server(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_synthetic_dataset(tmp_path / "images", n_patients=12, images_per_patient=3,
                                    size=48, seed=0, corrupt_examples=False)
    with contextmanager(_postgres_database)() as database, moto_s3() as s3, \
            running_mlflow(tmp_path / "mlflow", database, s3) as mlflow:
        root = make_agent_project(tmp_path / "project", name="restart", settings={
            "executor.kind": "serial", "storage.tracking": mlflow.url,
            "data.source.path": str(images.root), "train.epochs": 6, "train.patience": 6})
        env = {**os.environ, "MLFLOW_TRACKING_USERNAME": mlflow.username,
               "MLFLOW_TRACKING_PASSWORD": mlflow.password}
        log = root / "run.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([MEDOPS, "run", "-C", str(root)], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=True)
        project = Project.load(root)
        try:
            deadline = time.monotonic() + 300
            while not _training(project):
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "training never started"
                time.sleep(0.2)
            mlflow.restart()  # down for several seconds while the run logs epochs
            assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]

            run = project.state.list_runs()[0]
            assert run.status is RunStatus.SUCCEEDED, run.error
            assert all(s.attempts == 1 for s in run.steps), [(s.name, s.attempts)
                                                             for s in run.steps]
            from mlflow.tracking import MlflowClient

            monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow.username)
            monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow.password)
            client = MlflowClient(mlflow.url)
            experiment = client.get_experiment_by_name("restart")
            assert experiment is not None
            runs = client.search_runs([experiment.experiment_id])
            assert [r.info.run_id for r in runs] == [run.mlflow_run_id]
            versions = client.search_model_versions(f"name='{project.config.model_name}'")
            assert [v.version for v in versions] == ["1"]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            project.close()


def _training(project: Project) -> bool:
    runs = project.state.list_runs()
    return bool(runs) and any(s.name == "train" and s.status is StepStatus.RUNNING
                              for s in runs[0].steps)
