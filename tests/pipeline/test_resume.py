"""kill -9 in the middle of training, then resume: the run continues from the last checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from medops.demo.synthetic import SyntheticDataset
from medops.pipeline import reap_dead_runs
from medops.project import Project
from medops.storage import RunStatus
from medops.train.checkpoint import CHECKPOINT_FILE

from .conftest import FAST, make_project

pytestmark = pytest.mark.slow

MEDOPS = [sys.executable, "-m", "medops.cli"]


def _settings(**extra: object) -> list[str]:
    args: list[str] = []
    for key, value in {**FAST, "train.epochs": 12, "train.patience": 12, **extra}.items():
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def test_kill_9_mid_training_then_resume(project: Project,
                                         synthetic_dicom: SyntheticDataset) -> None:
    log = project.root / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*MEDOPS, "run", "-C", str(project.root), *_settings()],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoints = project.artifacts / "checkpoints"
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob(f"*/{CHECKPOINT_FILE}")):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "training never wrote a checkpoint"
        time.sleep(0.2)
    time.sleep(1.5)  # let it finish another epoch or two
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    reloaded = make_project(project.root)
    state = reloaded.state
    killed = state.list_runs()[0]
    assert killed.status is RunStatus.RUNNING  # nothing was left to say otherwise
    assert reap_dead_runs(reloaded) == [killed.id]
    killed = state.get_run(killed.id)
    assert killed.status is RunStatus.INTERRUPTED
    assert {s.name: s.status.value for s in killed.steps}["train"] == "running"
    assert killed.mlflow_run_id is not None
    mlflow = reloaded.tracker.client
    assert mlflow.get_run(killed.mlflow_run_id).info.status == "KILLED"

    done = subprocess.run([*MEDOPS, "runs", "resume", killed.id, "-C", str(project.root)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    record = state.get_run(killed.id)
    assert record.status is RunStatus.SUCCEEDED
    train = next(s for s in record.steps if s.name == "train")
    assert train.outputs["resumed_from_epoch"] >= 1
    ingest = next(s for s in record.steps if s.name == "ingest")
    assert ingest.attempts == 1  # finished steps were not run again
    assert mlflow.get_run(killed.mlflow_run_id).info.status == "FINISHED"


def test_resume_refuses_a_finished_run(project: Project) -> None:
    done = subprocess.run([*MEDOPS, "run", "-C", str(project.root), *_settings(**{
        "train.epochs": 1})], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    run_id = make_project(project.root).state.list_runs()[0].id
    again = subprocess.run([*MEDOPS, "runs", "resume", run_id, "-C", str(project.root)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 6 and "already finished" in again.stdout + again.stderr


def test_sigterm_mid_training_marks_the_run_interrupted_at_once(project: Project) -> None:
    log = project.root / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*MEDOPS, "run", "-C", str(project.root), *_settings()],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    state = make_project(project.root).state
    deadline = time.monotonic() + 240
    while not any(s.name == "train" and s.status.value == "running"
                  for r in state.list_runs() for s in r.steps):
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.1)
    proc.terminate()
    assert proc.wait(timeout=30) == 130, log.read_text()
    # Recorded by the process itself, not inferred later from a dead pid.
    run = state.list_runs()[0]
    assert run.status is RunStatus.INTERRUPTED, log.read_text()
    train = next(s for s in run.steps if s.name == "train")
    assert train.attempts == 1 and train.status.value == "running"
    assert "medops runs resume" in log.read_text()
