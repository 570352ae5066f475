"""Where medops keeps things: the state store (runs, items, events, audit) and locations."""

from medops.storage.locations import local_path, sqlalchemy_url
from medops.storage.records import (
    AuditEntry,
    DecisionStatus,
    DeploymentRecord,
    EventDecision,
    EventKind,
    EventRecord,
    Item,
    ItemStatus,
    RunRecord,
    RunStatus,
    Split,
    StepRecord,
    StepStatus,
    drift_series_key,
)
from medops.storage.state import StateStore

__all__ = [
    "AuditEntry",
    "DecisionStatus",
    "DeploymentRecord",
    "EventDecision",
    "EventKind",
    "EventRecord",
    "Item",
    "ItemStatus",
    "RunRecord",
    "RunStatus",
    "Split",
    "StateStore",
    "StepRecord",
    "StepStatus",
    "drift_series_key",
    "local_path",
    "sqlalchemy_url",
]
