"""The one place a run's end is recorded in both stores: the state database and MLflow.

A medops run and its MLflow run must agree: the MLflow UI should show neither a dead run as
running nor a resumed one as ended. The pipeline's runner ends the runs it executes; runs whose
holder died (kill -9, a crash, a reboot, on any machine) are reaped here by whoever looks first:
the agent, the CLI, the Python API or the team server.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal, Protocol

from medops.storage import StateStore

if TYPE_CHECKING:
    from medops.registry.tracking import Tracker

log = logging.getLogger(__name__)

MlflowStatus = Literal["RUNNING", "FINISHED", "FAILED", "KILLED"]


class RunStores(Protocol):
    """The state store and the tracker (:class:`medops.project.Project` has both)."""

    @property
    def state(self) -> StateStore: ...
    @property
    def tracker(self) -> Tracker: ...


def mark_mlflow_run(stores: RunStores, run_id: str, status: MlflowStatus) -> None:
    """Give the run's MLflow run (if it has one) the medops run's state. Best effort: MLflow
    may be why the run failed, and then the steps that need it report that."""
    mlflow_run_id = stores.state.get_run(run_id).mlflow_run_id
    if not mlflow_run_id:
        return
    try:
        if status == "RUNNING":
            stores.tracker.reopen_run(mlflow_run_id)
        else:
            stores.tracker.end_run(mlflow_run_id, status)
    except Exception as exc:
        log.warning("could not mark MLflow run %s %s: %s", mlflow_run_id, status.lower(), exc)


def reap_dead_runs(stores: RunStores) -> list[str]:
    """Runs marked running whose holder is dead (its heartbeat stopped, on any machine, or its
    process on this one is gone) become ``interrupted``, and their MLflow runs killed: no
    handler of theirs could do it."""
    dead = stores.state.mark_dead_runs_interrupted()
    for run_id in dead:
        mark_mlflow_run(stores, run_id, "KILLED")
    return dead
