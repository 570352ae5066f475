"""One step at a time (`medops run --only STEP --run-id ID`): how an orchestrator runs a run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medops.config import Step
from medops.demo.synthetic import SyntheticDataset
from medops.errors import ConfigError, PipelineError, StepFailedError
from medops.pipeline import PipelineRunner, reap_dead_runs
from medops.project import Project
from medops.storage import RunStatus, StepStatus

from .conftest import make_project


def _steps(project: Project, run_id: str) -> dict[str, tuple[str, int]]:
    return {s.name: (s.status.value, s.attempts) for s in project.state.get_run(run_id).steps}


@pytest.mark.parametrize("run_id", ["", "a b", "-x", "run/1", "ü", "x" * 65])
def test_a_run_id_that_cannot_name_a_run_is_refused(project: Project, run_id: str) -> None:
    with pytest.raises(ConfigError, match="cannot name a run"):
        PipelineRunner(project).run_step(run_id, Step.INGEST, "airflow")
    assert project.state.list_runs() == []


def test_a_later_step_needs_the_run_and_its_earlier_steps(project: Project) -> None:
    runner = PipelineRunner(project)
    with pytest.raises(PipelineError, match=r"does not exist.*ingest"):
        runner.run_step("nightly-1", Step.SPLIT, "airflow")
    assert project.state.list_runs() == []
    runner.run_step("nightly-1", Step.INGEST, "airflow")
    with pytest.raises(PipelineError, match="needs step validate first"):
        runner.run_step("nightly-1", Step.SPLIT, "airflow")


def test_steps_continue_one_run_and_a_retried_step_is_not_redone(project: Project) -> None:
    runner = PipelineRunner(project)
    first = runner.run_step("nightly-2", Step.INGEST, "airflow")
    assert first.trigger == "airflow"
    # between two tasks no process holds the run: paused, never reaped as dead
    assert first.status is RunStatus.INTERRUPTED
    assert first.error is not None and "--only validate --run-id nightly-2" in first.error
    assert reap_dead_runs(project) == []
    again = runner.run_step("nightly-2", Step.INGEST, "airflow")  # a retried task
    assert again.status is RunStatus.INTERRUPTED
    assert _steps(project, "nightly-2")["ingest"] == ("succeeded", 1)
    runner.run_step("nightly-2", Step.VALIDATE, "airflow")
    steps = _steps(project, "nightly-2")
    assert steps["validate"] == ("succeeded", 1)
    assert steps["split"] == ("pending", 0)
    # a run whose id starts another's is still its own run
    other = runner.run_step("nightly", Step.INGEST, "airflow")
    assert other.id == "nightly"
    assert _steps(project, "nightly-2")["validate"] == ("succeeded", 1)


def test_a_failed_step_fails_the_run_and_its_retry_continues_it(
        tmp_path: Path, synthetic_dicom: SyntheticDataset) -> None:
    root = tmp_path / "proj"
    Project.init(root, name="test-project")
    shutil.rmtree(root / "data" / "raw")
    project = make_project(root)
    with pytest.raises(StepFailedError, match="no images"):
        PipelineRunner(project).run_step("nightly-3", Step.INGEST, "airflow")
    record = project.state.get_run("nightly-3")
    assert record.status is RunStatus.FAILED
    assert record.steps[0].status is StepStatus.FAILED
    assert record.steps[0].attempts == 1  # one attempt: the orchestrator retries

    shutil.copytree(synthetic_dicom.root, root / "data" / "raw")  # the cause fixed
    retried = PipelineRunner(make_project(root)).run_step("nightly-3", Step.INGEST, "airflow")
    assert retried.status is RunStatus.INTERRUPTED
    assert (retried.steps[0].status, retried.steps[0].attempts) == (StepStatus.SUCCEEDED, 2)


def test_a_discarded_run_is_not_continued(project: Project) -> None:
    from medops.pipeline import discard_run

    runner = PipelineRunner(project)
    runner.run_step("nightly-4", Step.INGEST, "airflow")
    discard_run(project, "nightly-4", "tester")
    with pytest.raises(PipelineError, match="discarded"):
        runner.run_step("nightly-4", Step.VALIDATE, "airflow")
