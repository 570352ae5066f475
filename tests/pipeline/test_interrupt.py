"""A stop (SIGINT/SIGTERM) interrupts a run so that it resumes: never a retry, never a failure,
even where a library turned the KeyboardInterrupt into its own error or swallowed it."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from medops.pipeline import Interrupt, PipelineRunner
from medops.pipeline.interrupt import caused_by_interrupt
from medops.project import Project
from medops.storage import RunStatus, StepStatus

from .conftest import AtStep, make_project

pytestmark = pytest.mark.slow


def _steps(project: Project, run_id: str) -> dict[str, Any]:
    return {s.name: s for s in project.state.get_run(run_id).steps}


def test_sigint_interrupts_the_running_step_and_the_handlers_are_restored(
        project: Project) -> None:
    before = signal.getsignal(signal.SIGINT)
    with Interrupt().on_signals() as stop:
        runner = PipelineRunner(project, AtStep("validate", lambda: signal.raise_signal(
            signal.SIGINT)), stop)
        with pytest.raises(KeyboardInterrupt):
            runner.run()
    assert signal.getsignal(signal.SIGINT) is before
    record = project.state.list_runs()[0]
    assert record.status is RunStatus.INTERRUPTED
    steps = _steps(project, record.id)
    assert steps["ingest"].status is StepStatus.SUCCEEDED
    assert steps["validate"].status is StepStatus.RUNNING and steps["validate"].attempts == 1
    assert steps["split"].status is StepStatus.PENDING


def test_a_stop_disguised_as_a_step_error_is_not_retried(project: Project) -> None:
    # numpy's np.load turns a KeyboardInterrupt into a TypeError: the step fails with an
    # ordinary error after the stop. Here a real one (MLflow cannot create its store).
    (project.root / "not-a-dir").write_text("a file where MLflow wants a folder")
    broken = make_project(project.root, **{
        "storage.tracking": "sqlite:///not-a-dir/mlflow.db", "pipeline.retries.attempts": 3})
    stop = Interrupt()
    reporter = AtStep("train", stop.request)
    with pytest.raises(KeyboardInterrupt):
        PipelineRunner(broken, reporter, stop).run()
    record = broken.state.list_runs()[0]
    assert record.status is RunStatus.INTERRUPTED
    train = _steps(broken, record.id)["train"]
    assert train.attempts == 1 and train.status is not StepStatus.FAILED
    assert reporter.failures == []

    resumed = PipelineRunner(make_project(project.root)).resume(record.id)
    assert resumed.status is RunStatus.SUCCEEDED


def test_a_swallowed_stop_ends_training_after_the_epoch_and_the_resume_continues(
        project: Project) -> None:
    stop = Interrupt()
    with pytest.raises(KeyboardInterrupt):
        PipelineRunner(project, AtStep("train", stop.request), stop).run()
    record = project.state.list_runs()[0]
    assert record.status is RunStatus.INTERRUPTED
    assert _steps(project, record.id)["train"].status is StepStatus.RUNNING
    mlrun = record.mlflow_run_id
    assert mlrun is not None
    assert project.tracker.client.get_run(mlrun).info.status == "KILLED"

    resumed = PipelineRunner(project).resume(record.id)
    assert resumed.status is RunStatus.SUCCEEDED
    assert project.tracker.client.get_run(mlrun).info.status == "FINISHED"
    train = _steps(project, record.id)["train"]
    assert train.outputs["resumed_from_epoch"] == 1 and train.outputs["epochs_run"] == 3
    assert train.attempts == 2


def test_an_error_raised_while_handling_a_keyboard_interrupt_is_recognised() -> None:
    def wrapped() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise TypeError("expected str, bytes or os.PathLike object") from None

    with pytest.raises(TypeError) as err:
        wrapped()
    # `from None` hides the cause from the traceback, not from __context__.
    assert caused_by_interrupt(err.value)
    assert not caused_by_interrupt(ValueError("a plain error"))


def test_a_second_signal_forces_the_stop_only_after_a_moment() -> None:
    # Ctrl-C reaches the whole process group (and the agent relays it): the copy that arrives
    # at once must not break the first stop's cleanup. A person pressing it again later,
    # because a long step swallowed the first, forces the stop.
    with Interrupt(force_after=0.2).on_signals() as stop:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert stop.requested
        signal.raise_signal(signal.SIGTERM)  # at once: ignored
        time.sleep(0.25)
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
    with Interrupt().on_signals():  # the agent's run process: never forced
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGTERM)
        time.sleep(0.25)
        signal.raise_signal(signal.SIGTERM)
