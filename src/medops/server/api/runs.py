"""Runs: the list, one run with its steps (outputs, errors), its log; asking for a run."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from medops.errors import NotFoundError
from medops.project import Project
from medops.server.auth import Principal, Role, require
from medops.storage import EventKind, RunRecord

Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Trainer = Annotated[Principal, Depends(require(Role.TRAINER))]
#: A run's log is served up to this many bytes (its end, where a failure is).
MAX_LOG_BYTES = 1_000_000
#: Runs whose process died are marked interrupted at most this often: a listing under load
#: must not scan for them on every request.
LIVENESS_EVERY_SECONDS = 5.0


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=1000)


def run_summary(r: RunRecord) -> dict[str, Any]:
    last = next((s.name for s in reversed(r.steps) if s.status.value != "pending"), None)
    return {"id": r.id, "status": r.status.value, "trigger": r.trigger,
            "started_at": r.started_at.isoformat(),
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "error": r.error, "last_step": last, "mlflow_run_id": r.mlflow_run_id}


def run_to_dict(r: RunRecord) -> dict[str, Any]:
    """What `medops runs show --json` prints: the run, its steps, their outputs and errors."""
    return {**run_summary(r), "host": r.host, "steps": [
        {"name": s.name, "status": s.status.value, "attempts": s.attempts,
         "started_at": s.started_at.isoformat() if s.started_at else None,
         "finished_at": s.finished_at.isoformat() if s.finished_at else None,
         "seconds": s.seconds, "error": s.error, "outputs": s.outputs} for s in r.steps]}


def run_log(project: Project, run: RunRecord) -> Path | None:
    """The run's log file, if its run folder holds one (``run.log``, else any ``*.log``)."""
    folder = project.artifacts / "runs" / run.id
    preferred = folder / "run.log"
    if preferred.is_file():
        return preferred
    return next(iter(sorted(folder.glob("*.log"))), None) if folder.is_dir() else None


class _Liveness:
    """Marks runs whose process is gone as interrupted, as `medops runs ls` does, at most
    every :data:`LIVENESS_EVERY_SECONDS`."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._lock = threading.Lock()
        self._last = float("-inf")

    def check(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < LIVENESS_EVERY_SECONDS:
                return
            self._last = now
        from medops.registry.runs import reap_dead_runs  # MLflow loads only when needed

        reap_dead_runs(self.project)


def build(project: Project) -> APIRouter:
    router = APIRouter(tags=["runs"])
    liveness = _Liveness(project)

    @router.get("/runs")
    def runs(caller: Viewer,
             limit: Annotated[int, Query(ge=1, le=500)] = 20) -> list[dict[str, Any]]:
        """The most recent runs, newest first."""
        liveness.check()
        return [run_summary(r) for r in project.state.list_runs(limit)]

    @router.get("/runs/{run_id}")
    def run(run_id: str, caller: Viewer) -> dict[str, Any]:
        """One run (an id prefix is enough): its steps with timings, outputs and errors."""
        liveness.check()
        return run_to_dict(project.state.get_run(run_id))

    @router.get("/runs/{run_id}/log", response_class=PlainTextResponse)
    def log(run_id: str, caller: Viewer) -> PlainTextResponse:
        """The run's log file (its last megabyte), when the run wrote one."""
        record = project.state.get_run(run_id)
        path = run_log(project, record)
        if path is None:
            raise NotFoundError(f"run {record.id} has no log file; its steps and errors are "
                                f"at /api/runs/{record.id}")
        size = path.stat().st_size
        with path.open("rb") as f:
            f.seek(max(0, size - MAX_LOG_BYTES))
            text = f.read().decode("utf-8", errors="replace")
        return PlainTextResponse(text)

    @router.post("/runs/requests", status_code=202)
    def request_run(body: RunRequest, caller: Trainer) -> dict[str, Any]:
        """Ask the agent for a pipeline run (a ``run.requested`` event, as `medops agent
        request` stores); the agent decides, and /api/events shows its decision."""
        event = project.state.add_event(EventKind.RUN_REQUESTED,
                                        {"reason": body.reason, "by": caller.name},
                                        f"request:{uuid.uuid4().hex}")
        return {"event_id": event.id if event else None, "by": caller.name}

    return router
