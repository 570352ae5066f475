"""The state store: one database, one engine, a small store per kind of record.

SQLite by default, PostgreSQL for a team: the same tables, chosen by the URL. The stores, each
usable on its own over a :class:`~medops.storage.engine.Database`:

=====================  =====================================  ================================
attribute              store                                  records
=====================  =====================================  ================================
``runs``               :class:`~medops.storage.runs.RunStore`  runs, steps, owners, heartbeats
``catalog``            :class:`CatalogStore`                  items, split groups, cursors
``events``             :class:`EventStore`                    events, decisions, claims
``audit_trail``        :class:`AuditTrail`                    the audit log (a hash chain)
``deployment_history`` :class:`DeploymentHistory`             which version was live when
``leases``             :class:`LeaseStore`                    one holder per duty (the agent)
=====================  =====================================  ================================

The methods below with the names of the single store this replaced delegate to them, so code
written against it keeps working; new code may use the stores directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from medops.storage import audit, catalog, deployments, events, leases, runs
from medops.storage.audit import AuditTrail
from medops.storage.base import utcnow
from medops.storage.catalog import CatalogStore
from medops.storage.deployments import DeploymentHistory
from medops.storage.engine import Database, RetryPolicy
from medops.storage.events import EventStore
from medops.storage.leases import LeaseStore
from medops.storage.records import (
    AuditEntry,
    DecisionStatus,
    DeploymentRecord,
    EventRecord,
    Item,
    ItemStatus,
    RunRecord,
    RunStatus,
    Split,
)
from medops.storage.runs import RunStore

__all__ = ["StateStore", "utcnow"]

_ALL_TABLES = (*runs.TABLES, *catalog.TABLES, *events.TABLES, *audit.TABLES,
               *deployments.TABLES, *leases.TABLES)


class StateStore:
    """Every store of the state database at ``url``, on one engine opened once."""

    def __init__(self, url: str, retry: RetryPolicy | None = None) -> None:
        self.url = url
        self.db = Database(url, retry)
        self.db.ensure(_ALL_TABLES)  # all at once: one pass over the schema
        self.runs = RunStore(self.db)
        self.catalog = CatalogStore(self.db)
        self.events = EventStore(self.db)
        self.audit_trail = AuditTrail(self.db)
        self.deployment_history = DeploymentHistory(self.db)
        self.leases = LeaseStore(self.db)

    def close(self) -> None:
        self.db.close()

    @property
    def engine(self) -> Engine:
        """The engine, for tables kept in their own modules (e.g. storage/received.py)."""
        return self.db.engine

    # -- runs and steps -------------------------------------------------------------------
    def create_run(self, run_id: str, trigger: str, config: dict[str, Any],
                   steps: Sequence[str], stale_after: float = runs.DEFAULT_STALE) -> RunRecord:
        return self.runs.create_run(run_id, trigger, config, steps, stale_after)

    def get_run(self, run_id: str) -> RunRecord:
        return self.runs.get_run(run_id)

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        return self.runs.list_runs(limit)

    def claim_run(self, run_id: str, stale_after: float = runs.DEFAULT_STALE) -> None:
        self.runs.claim_run(run_id, stale_after)

    def take_run(self, run_id: str, status: RunStatus, pid: int | None = None,
                 owner: str | None = None, stale_after: float = runs.DEFAULT_STALE) -> bool:
        return self.runs.take_run(run_id, status, pid, owner, stale_after)

    def finish_run(self, run_id: str, status: RunStatus, error: str | None = None,
                   owner: str | None = None) -> bool:
        return self.runs.finish_run(run_id, status, error, owner)

    def set_run_fields(self, run_id: str, **fields: Any) -> None:
        self.runs.set_run_fields(run_id, **fields)

    def update_step(self, run_id: str, name: str, **fields: Any) -> None:
        self.runs.update_step(run_id, name, **fields)

    def mark_dead_runs_interrupted(self) -> list[str]:
        return self.runs.mark_dead_runs_interrupted()

    def run_ids(self, status: RunStatus) -> list[str]:
        return self.runs.run_ids(status)

    def last_run_finished_at(self) -> datetime | None:
        return self.runs.last_run_finished_at()

    # -- catalog --------------------------------------------------------------------------
    def upsert_items(self, items: Iterable[Item]) -> tuple[int, int]:
        return self.catalog.upsert_items(items)

    def items(self, status: ItemStatus | None = None, source: str | None = None) -> list[Item]:
        return self.catalog.items(status, source)

    def update_items(self, updates: Iterable[tuple[int, dict[str, Any]]]) -> None:
        self.catalog.update_items(updates)

    def item_counts(self) -> dict[str, dict[str, int]]:
        return self.catalog.item_counts()

    def split_groups(self) -> dict[str, Split]:
        return self.catalog.split_groups()

    def assign_split_groups(self, assignments: dict[str, Split]) -> None:
        self.catalog.assign_split_groups(assignments)

    def get_cursor(self, source: str) -> str | None:
        return self.catalog.get_cursor(source)

    def set_cursor(self, source: str, cursor: str) -> None:
        self.catalog.set_cursor(source, cursor)

    def cursors(self) -> dict[str, tuple[str, datetime]]:
        return self.catalog.cursors()

    # -- events and decisions -------------------------------------------------------------
    def add_event(self, kind: str, payload: dict[str, Any],
                  idempotency_key: str | None = None) -> EventRecord | None:
        return self.events.add_event(kind, payload, idempotency_key)

    def keyed_events(self, key_prefix: str, up_to_id: int | None = None) -> list[EventRecord]:
        return self.events.keyed_events(key_prefix, up_to_id)

    def decide_event(self, event_id: int, status: DecisionStatus, decision: str, reason: str,
                     run_id: str | None = None) -> None:
        self.events.decide_event(event_id, status, decision, reason, run_id)

    def claim_events_for_run(self, run_id: str, trigger: str, config: dict[str, Any],
                             steps: Sequence[str], claims: dict[int, tuple[str, str]],
                             lease: tuple[str, str] | None = None,
                             stale_after: float = runs.DEFAULT_STALE) -> bool:
        return self.events.claim_events_for_run(run_id, trigger, config, steps, claims, lease,
                                                stale_after)

    def release_claims(self, run_id: str) -> None:
        self.events.release_claims(run_id)

    def mark_notified(self, event_id: int) -> None:
        self.events.mark_notified(event_id)

    def open_events(self, after_id: int = 0, limit: int = 1000) -> list[EventRecord]:
        return self.events.open_events(after_id, limit)

    def unnotified_events(self, kinds: Sequence[str], limit: int = 1000) -> list[EventRecord]:
        return self.events.unnotified_events(kinds, limit)

    def event_log(self, kind: str | None = None, limit: int = 100) -> list[EventRecord]:
        return self.events.event_log(kind, limit)

    # -- audit and deployments ------------------------------------------------------------
    def audit(self, action: str, actor: str, target: str, details: dict[str, Any]) -> None:
        self.audit_trail.audit(action, actor, target, details)

    def audit_log(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        return self.audit_trail.audit_log(target, limit)

    def record_deployment(self, model: str, version: str, actor: str, note: str, action: str,
                          at: datetime | None = None,
                          audit: AuditEntry | None = None) -> DeploymentRecord:
        return self.deployment_history.record_deployment(model, version, actor, note, action,
                                                         at, audit)

    def deployments(self, model: str) -> list[DeploymentRecord]:
        return self.deployment_history.deployments(model)

    def live_deployment(self, model: str, at: datetime | None = None) -> DeploymentRecord | None:
        return self.deployment_history.live_deployment(model, at)
