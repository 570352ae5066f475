"""Giving up a run for good: ``medops runs discard``.

An interrupted or failed run keeps its training checkpoint (hundreds of MB for a resnet) so
that ``medops runs resume`` can continue it, and nothing else can tell a run that will be
resumed from one that never will. Discarding says so: the run can no longer be resumed, its
MLflow run is marked killed, and its unfinished checkpoint is deleted unless another run can
still resume from it (runs with the same data and configuration share one). The run's record,
reports and events stay, and the audit log says who discarded it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medops.config.enums import Step
from medops.errors import PipelineError
from medops.pipeline.context import Workspace
from medops.registry.runs import mark_mlflow_run, reap_dead_runs
from medops.storage import RunRecord, RunStatus, StepStatus
from medops.train import discard_checkpoint

_DISCARDABLE = (RunStatus.INTERRUPTED, RunStatus.FAILED)


@dataclass(frozen=True)
class Discarded:
    """What :func:`discard_run` did. ``checkpoint``: the run's training checkpoint folder, if
    it started training; ``removed``: whether it was deleted; ``kept_because``: why not."""

    run: RunRecord
    checkpoint: Path | None
    removed: bool
    kept_because: str | None


def discard_run(ws: Workspace, run_id: str, by: str) -> Discarded:
    """Discard the interrupted or failed run ``run_id`` (an id prefix is enough)."""
    reap_dead_runs(ws)
    record = ws.state.get_run(run_id)
    if record.status not in _DISCARDABLE:
        why = {RunStatus.RUNNING: f"is still running (pid {record.pid} on {record.host}); "
                                  "stop it first",
               RunStatus.SUCCEEDED: "succeeded: there is nothing to give up",
               RunStatus.DISCARDED: "was discarded already"}[record.status]
        raise PipelineError(f"run {record.id} {why}; only an interrupted or failed run can be "
                            "discarded")
    # compare-and-set, so a resume (the agent's, or another terminal's) and a discard of the
    # same run cannot both proceed
    if not ws.state.take_run(record.id, record.status):
        raise PipelineError(f"run {record.id} changed while it was being discarded (resumed "
                            "elsewhere?); see `medops runs show`")
    try:
        checkpoint = _checkpoint(record)
        kept_because = _shared_with(ws, record.id, checkpoint) if checkpoint else None
        removed = False
        if checkpoint is not None and kept_because is None:
            removed = discard_checkpoint(checkpoint)
            if removed:  # and its copy in a shared artifact root, if there is one
                ws.artifact_sync.discard(checkpoint, strict=False)
            if not removed and checkpoint.is_dir():
                kept_because = "it holds a finished training, which an unchanged re-run reuses"
    except BaseException:
        ws.state.finish_run(record.id, record.status, record.error)  # as it was
        raise
    ws.state.finish_run(record.id, RunStatus.DISCARDED, record.error)
    mark_mlflow_run(ws, record.id, "KILLED")
    ws.state.audit("run.discarded", by, record.id, {
        "was": record.status.value, "checkpoint": str(checkpoint) if checkpoint else None,
        "checkpoint_removed": removed})
    return Discarded(ws.state.get_run(record.id), checkpoint, removed, kept_because)


def _checkpoint(record: RunRecord) -> Path | None:
    """The checkpoint folder of the run's unfinished training (the train step records it when
    it starts)."""
    train = next((s for s in record.steps if s.name == Step.TRAIN.value), None)
    if train is None or train.status is StepStatus.SUCCEEDED or "checkpoint" not in train.outputs:
        return None
    return Path(train.outputs["checkpoint"])


def _shared_with(ws: Workspace, run_id: str, checkpoint: Path) -> str | None:
    """Why ``checkpoint`` must stay: another run that may still train from it."""
    for status in (RunStatus.RUNNING, *_DISCARDABLE):
        for other in ws.state.run_ids(status):
            if other != run_id and _checkpoint(ws.state.get_run(other)) == checkpoint:
                return f"run {other} ({status.value}) can still resume from it"
    return None
