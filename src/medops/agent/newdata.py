"""The "sufficient data?" question: how many new labelled, valid items a retraining would add.

New means: not in the dataset version the current ``champion`` was trained on, or, with no
champion yet, not in the dataset of the latest run that got as far as its split. Items still
pending validation are validated first (the same check as the pipeline's validate step, whose
verdicts it then reuses), so a corrupt file never counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from medops.config.schema import MedopsConfig
from medops.data.manifest import load_manifest
from medops.data.validate import validate_items
from medops.executor import Executor, SerialExecutor
from medops.storage import ItemStatus, StateStore, StepStatus
from medops.storage.artifact_sync import ArtifactSync

log = logging.getLogger(__name__)

_POOL_FROM = 64  # below this many pending items, decoding in-process beats starting a pool


class _Source(Protocol):
    @property
    def config(self) -> MedopsConfig: ...
    @property
    def state(self) -> StateStore: ...
    @property
    def artifacts(self) -> Path: ...
    @property
    def artifact_sync(self) -> ArtifactSync: ...
    def executor(self) -> Executor: ...


@dataclass(frozen=True)
class NewData:
    count: int  # new labelled items with status ok
    since: str  # what they are new relative to, in words


def validate_pending(ws: _Source) -> int:
    """Validate items still pending; returns how many were checked."""
    state = ws.state
    pending = state.items(ItemStatus.PENDING)
    if not pending:
        return 0
    known = {i.key: i.uri for i in state.items(ItemStatus.OK)}
    with (ws.executor() if len(pending) >= _POOL_FROM else SerialExecutor()) as pool:
        verdicts = validate_items(pending, pool, known, ws.config.task)
    state.update_items((item.id, {"status": status, "reason": reason})
                       for item, status, reason in verdicts if item.id is not None)
    return len(pending)


def count_new_items(ws: _Source, champion_dataset: str | None) -> NewData:
    """New labelled, valid items since ``champion_dataset`` (or the last run's dataset)."""
    validate_pending(ws)
    ok = [i for i in ws.state.items(ItemStatus.OK) if i.label is not None]
    version, since = champion_dataset, f"the champion's dataset {champion_dataset}"
    if version is None:
        version = _last_run_dataset(ws.state)
        since = f"the last run's dataset {version}" if version else "the start (no run yet)"
    if version is None:
        return NewData(len(ok), since)
    try:
        folder = ws.artifact_sync.ensure_local(ws.artifacts / "datasets" / version,
                                               immutable=True)
        keys = set(load_manifest(folder).frame["key"])
    except Exception as exc:  # a deleted manifest: count everything rather than never retrain
        log.warning("cannot read dataset %s (%s); counting every item as new", version,
                    type(exc).__name__)
        return NewData(len(ok), f"the start (dataset {version} is unreadable)")
    return NewData(sum(1 for i in ok if i.key not in keys), since)


def _last_run_dataset(state: StateStore) -> str | None:
    for run in state.list_runs(20):
        split = next((s for s in run.steps if s.name == "split"), None)
        if split is not None and split.status is StepStatus.SUCCEEDED:
            version = split.outputs.get("dataset_version")
            if isinstance(version, str):
                return version
    return None
