"""`medops runs discard`: an interrupted run given up for good frees its checkpoint, unless
another run can still resume from it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medops.errors import PipelineError
from medops.pipeline import Interrupt, PipelineRunner, discard_run
from medops.project import Project
from medops.storage import RunRecord, RunStatus
from medops.train.checkpoint import CHECKPOINT_FILE

from .conftest import AtStep

pytestmark = pytest.mark.slow


def _interrupted_in_training(project: Project) -> RunRecord:
    """A run stopped as training starts: it ends after its first epoch, interrupted."""
    stop = Interrupt()
    with pytest.raises(KeyboardInterrupt):
        PipelineRunner(project, AtStep("train", stop.request), stop).run()
    record = project.state.list_runs()[0]
    assert record.status is RunStatus.INTERRUPTED
    return record


def _checkpoint(record: RunRecord) -> Path:
    train = next(s for s in record.steps if s.name == "train")
    return Path(train.outputs["checkpoint"])


def test_discard_removes_the_checkpoint_and_the_run_cannot_be_resumed(
        project: Project) -> None:
    record = _interrupted_in_training(project)
    checkpoint = _checkpoint(record)
    assert (checkpoint / CHECKPOINT_FILE).is_file()

    done = subprocess.run([sys.executable, "-m", "medops.cli", "runs", "discard", record.id[:20],
                           "-C", str(project.root), "--by", "Dr. Lee", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["run"]["status"] == "discarded"
    assert out["checkpoint"] == str(checkpoint) and out["checkpoint_removed"] is True
    assert not checkpoint.exists()
    assert project.state.get_run(record.id).status is RunStatus.DISCARDED
    audit = project.state.audit_log(record.id)
    assert [(a.action, a.actor) for a in audit] == [("run.discarded", "Dr. Lee")]
    assert record.mlflow_run_id is not None
    mlflow_run = project.tracker.client.get_run(record.mlflow_run_id)
    assert mlflow_run.info.status == "KILLED"

    with pytest.raises(PipelineError, match="was discarded; start a new one"):
        PipelineRunner(project).resume(record.id)
    with pytest.raises(PipelineError, match="was discarded already"):
        discard_run(project, record.id, "Dr. Lee")


def test_a_checkpoint_another_run_can_resume_from_stays(project: Project) -> None:
    first = _interrupted_in_training(project)
    # same data and configuration: the second run continues the first one's checkpoint
    second = _interrupted_in_training(project)
    assert _checkpoint(first) == _checkpoint(second)

    done = discard_run(project, first.id, "tester")
    assert not done.removed and done.kept_because is not None
    assert second.id in done.kept_because
    assert (_checkpoint(second) / CHECKPOINT_FILE).is_file()

    finished = PipelineRunner(project).resume(second.id)
    assert finished.status is RunStatus.SUCCEEDED
    train = next(s for s in finished.steps if s.name == "train")
    assert train.outputs["resumed_from_epoch"] == 2  # one epoch by each interrupted run
    with pytest.raises(PipelineError, match="succeeded: there is nothing to give up"):
        discard_run(project, second.id, "tester")
