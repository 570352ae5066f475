"""What a step sees: the project's services, its run, and earlier steps' outputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from medops.config.schema import MedopsConfig
from medops.pipeline.interrupt import Interrupt
from medops.storage import StateStore
from medops.storage.artifact_sync import ArtifactSync

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from medops.executor import Executor
    from medops.registry import ModelRegistry, Tracker


class Workspace(Protocol):
    """The services a pipeline needs; :class:`medops.project.Project` provides them."""

    @property
    def config(self) -> MedopsConfig: ...
    @property
    def root(self) -> Path: ...
    @property
    def state(self) -> StateStore: ...
    @property
    def artifacts(self) -> Path: ...
    @property
    def artifact_sync(self) -> ArtifactSync: ...
    @property
    def tracker(self) -> Tracker: ...
    @property
    def registry(self) -> ModelRegistry: ...
    def executor(self) -> Executor: ...
    def with_config(self, config: MedopsConfig) -> Workspace: ...


class Reporter(Protocol):
    """Where a run reports progress. The CLI draws it; the API default is silent."""

    def step_started(self, step: str, attempt: int) -> None: ...
    def step_finished(self, step: str, outputs: dict[str, Any], seconds: float) -> None: ...
    def step_failed(self, step: str, error: str, attempt: int, will_retry: bool) -> None: ...
    def progress(self, step: str, done: int, total: int) -> None: ...
    def message(self, step: str, text: str) -> None: ...


class SilentReporter:
    def step_started(self, step: str, attempt: int) -> None:
        pass

    def step_finished(self, step: str, outputs: dict[str, Any], seconds: float) -> None:
        pass

    def step_failed(self, step: str, error: str, attempt: int, will_retry: bool) -> None:
        pass

    def progress(self, step: str, done: int, total: int) -> None:
        pass

    def message(self, step: str, text: str) -> None:
        pass


@dataclass
class RunContext:
    ws: Workspace
    run_id: str
    run_dir: Path
    reporter: Reporter
    interrupt: Interrupt = field(default_factory=Interrupt)
    step: str = ""
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def config(self) -> MedopsConfig:
        return self.ws.config

    def out(self, step: str, key: str) -> Any:
        """An output of an earlier step of this run."""
        return self.outputs[step][key]

    def mlflow_run(self) -> str:
        """This run's MLflow run id, created on first use and kept across resumes."""
        record = self.ws.state.get_run(self.run_id)
        if record.mlflow_run_id:
            return record.mlflow_run_id
        run = self.ws.tracker.start_run(self.run_id, {"medops.run_id": self.run_id})
        self.ws.state.set_run_fields(self.run_id, mlflow_run_id=run)
        return run

    def progress(self, done: int, total: int) -> None:
        self.reporter.progress(self.step, done, total)

    def message(self, text: str) -> None:
        self.reporter.message(self.step, text)
