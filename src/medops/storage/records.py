"""Plain domain records the state store reads and writes. No ORM types leave the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from medops.config.enums import EventKind, StrEnum


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the process died; `medops runs resume` continues it
    DISCARDED = "discarded"  # given up by a person (`medops runs discard`); never resumed


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ItemStatus(StrEnum):
    PENDING = "pending"  # listed, not yet validated
    OK = "ok"
    QUARANTINED = "quarantined"


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass
class Item:
    """One image (or one frame of a multi-frame DICOM) known to the project."""

    uri: str
    content_hash: str
    source: str
    frame: int | None = None
    label: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    status: ItemStatus = ItemStatus.PENDING
    reason: str | None = None
    split: Split | None = None  # a published split (MedMNIST) or the one assigned once
    info: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    @property
    def key(self) -> str:
        """Content-addressed key: the same pixels have the same key wherever they live."""
        return self.content_hash if self.frame is None else f"{self.content_hash}_f{self.frame}"


@dataclass
class StepRecord:
    run_id: str
    name: str
    seq: int
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


@dataclass
class RunRecord:
    id: str
    status: RunStatus
    trigger: str
    config: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    pid: int | None = None
    host: str | None = None
    mlflow_run_id: str | None = None
    steps: list[StepRecord] = field(default_factory=list)
    owner: str | None = None  # PID@HOST#NODE.TOKEN of the process holding it (while running)
    heartbeat_at: datetime | None = None  # its holder's last sign of life


def drift_series_key(model: str, version: object) -> str:
    """The idempotency-key prefix of one model version's ``drift.detected`` events: the
    monitor's key is this plus the checked window's end, so a window is reported once."""
    return f"{EventKind.DRIFT_DETECTED}:{model}:{version}:"


@dataclass
class EventRecord:
    kind: str  # an EventKind value; a plain string so rows of a newer medops still load
    payload: dict[str, Any]
    created_at: datetime
    idempotency_key: str | None = None
    id: int | None = None
    decision: EventDecision | None = None  # filled by StateStore.event_log / open_events

    def to_dict(self) -> dict[str, Any]:
        """The shape of `medops events ls --json` and of the server's /api/events."""
        d = self.decision
        return {"id": self.id, "kind": self.kind, "created_at": self.created_at.isoformat(),
                "idempotency_key": self.idempotency_key, "payload": self.payload,
                "status": d.status.value if d else "new",
                "decision": d.decision if d else None, "reason": d.reason if d else None,
                "run_id": d.run_id if d else None, "notified": d.notified if d else False,
                "decided_at": d.updated_at.isoformat() if d else None}


class DecisionStatus(StrEnum):
    """Where the agent is with an event. No decision row at all: not seen yet."""

    WAITING = "waiting"  # debounced, cooling down or behind a running run: decided again later
    CLAIMED = "claimed"  # its run exists and is not finished
    HANDLED = "handled"  # done; never looked at again


@dataclass
class EventDecision:
    """What the agent decided about one event, and why."""

    event_id: int
    status: DecisionStatus
    decision: str  # started, coalesced, skipped, debounced, cooldown, waiting, ignored, ...
    reason: str
    updated_at: datetime
    run_id: str | None = None
    notified: bool = False


@dataclass
class AuditEntry:
    action: str
    actor: str
    target: str
    details: dict[str, Any]
    at: datetime
    id: int | None = None
    prev_hash: str | None = None  # the hash of the row before it in the chain
    hash: str | None = None  # sha256 over prev_hash and this row's contents


@dataclass
class DeploymentRecord:
    """One period during which a model version was the live ``champion``."""

    model: str
    version: str
    live_from: datetime
    live_until: datetime | None  # None: still live
    actor: str
    note: str
    action: str  # what made it live: approve, auto-approve, rollback
    id: int | None = None

    def live_at(self, at: datetime) -> bool:
        return self.live_from <= at and (self.live_until is None or at < self.live_until)
