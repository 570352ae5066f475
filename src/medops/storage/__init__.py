"""Where medops keeps things: the state store (runs, items, events, audit) and locations.

The state database is one engine (:mod:`~medops.storage.engine`: SQLite or PostgreSQL,
transactions retried across a restart) with a small store per kind of record: ``runs``
(runs, steps, heartbeats), ``catalog`` (items, split groups, cursors), ``events`` (events and
the agent's decisions), ``audit`` (the hash-chained audit log), ``deployments`` (what was live
when) and ``leases`` (one agent per project); :class:`StateStore` opens them together.
"""

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
