"""Events and what the agent decided about each (waiting, claimed by a run, handled).

An event is stored once (a duplicate idempotency key stores nothing). A run is created in the
same transaction that claims its events, so a crash leaves both or neither; with a lease
(:mod:`medops.storage.leases`) that transaction also proves its agent still leads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql import Select

from medops.errors import StoreError
from medops.storage import leases, runs
from medops.storage.base import Base, aware_or_now, tables, utcnow
from medops.storage.engine import Database, transactional
from medops.storage.records import DecisionStatus, EventDecision, EventRecord


class _Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _EventDecision(Base):
    """The agent's processing state of one event (see :class:`EventDecision`)."""

    __tablename__ = "event_decisions"
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id", ondelete="CASCADE"),
                                          primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    decision: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    notified: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


TABLES = tables(_Event, _EventDecision)
Joined = Select[_Event, _EventDecision]
Shape = Callable[[Joined], Joined]


class EventStore:
    """Events and decisions on ``db`` (runs, for claims, and leases, for fencing, too)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure((*runs.TABLES, *TABLES, *leases.TABLES))

    def add_event(self, kind: str, payload: dict[str, Any],
                  idempotency_key: str | None = None) -> EventRecord | None:
        """Store an event durably. A duplicate idempotency key stores nothing: returns None."""
        try:
            return self._add(str(kind), payload, idempotency_key)
        except IntegrityError:
            return None

    @transactional("store event")
    def _add(self, s: Session, kind: str, payload: dict[str, Any],
             idempotency_key: str | None) -> EventRecord:
        row = _Event(kind=kind, payload=payload, idempotency_key=idempotency_key,
                     created_at=utcnow())
        s.add(row)
        s.flush()
        return EventRecord(kind=kind, payload=payload, created_at=row.created_at,
                           idempotency_key=idempotency_key, id=row.id)

    @transactional("read events")
    def keyed_events(self, s: Session, key_prefix: str,
                     up_to_id: int | None = None) -> list[EventRecord]:
        """Events whose idempotency key starts with ``key_prefix`` (one series, such as one
        model version's drift), with ids up to ``up_to_id`` (all: None), oldest first."""
        q = select(_Event).where(_Event.idempotency_key.startswith(key_prefix, autoescape=True))
        if up_to_id is not None:
            q = q.where(_Event.id <= up_to_id)
        return [_event_record(e) for e in s.scalars(q.order_by(_Event.id))]

    # -- decisions (the agent's processing state; see medops.agent) -----------------------
    @transactional("record decision")
    def decide_event(self, s: Session, event_id: int, status: DecisionStatus, decision: str,
                     reason: str, run_id: str | None = None) -> None:
        """Record what was decided about ``event_id``, replacing an earlier decision."""
        _put_decision(s, event_id, status, decision, reason, run_id)

    def claim_events_for_run(self, run_id: str, trigger: str, config: dict[str, Any],
                             steps: Sequence[str], claims: dict[int, tuple[str, str]],
                             lease: tuple[str, str] | None = None,
                             stale_after: float = runs.DEFAULT_STALE) -> bool:
        """Create run ``run_id`` and claim events for it ({event id: (decision, reason)}) in
        one transaction, so a crash leaves both or neither. False if the run already exists.
        With ``lease`` (name, holder), only while that holder holds it: a StoreError if not."""
        try:
            self._claim(run_id, trigger, config, list(steps), dict(claims), lease, stale_after)
        except IntegrityError:
            return False
        return True

    @transactional("claim events")
    def _claim(self, s: Session, run_id: str, trigger: str, config: dict[str, Any],
               steps: list[str], claims: dict[int, tuple[str, str]],
               lease: tuple[str, str] | None, stale_after: float) -> None:
        if lease is not None and not leases.still_held(s, *lease):
            raise StoreError(f"{lease[1]} no longer holds the lease {lease[0]!r} (another "
                             f"process took it over); run {run_id} was not created")
        runs.add_run(self.db, s, run_id, trigger, config, steps, stale_after)
        for event_id, (decision, reason) in claims.items():
            _put_decision(s, event_id, DecisionStatus.CLAIMED, decision, reason, run_id)

    @transactional("release claims")
    def release_claims(self, s: Session, run_id: str) -> None:
        """The events claimed by ``run_id`` are handled (its run finished)."""
        s.execute(update(_EventDecision).where(
            _EventDecision.run_id == run_id,
            _EventDecision.status == DecisionStatus.CLAIMED.value,
        ).values(status=DecisionStatus.HANDLED.value, updated_at=utcnow()))

    @transactional("mark notified")
    def mark_notified(self, s: Session, event_id: int) -> None:
        s.execute(update(_EventDecision).where(_EventDecision.event_id == event_id)
                  .values(notified=True))

    # -- queries ----------------------------------------------------------------------------
    def open_events(self, after_id: int = 0, limit: int = 1000) -> list[EventRecord]:
        """Events not yet handled (never seen, waiting or claimed), oldest first."""
        return self._joined(
            lambda q: q.where(_Event.id > after_id, or_(
                _EventDecision.event_id.is_(None),
                _EventDecision.status != DecisionStatus.HANDLED.value)).order_by(_Event.id),
            limit)

    def unnotified_events(self, kinds: Sequence[str], limit: int = 1000) -> list[EventRecord]:
        """Decided events of ``kinds`` whose notification was not sent yet, oldest first."""
        names = [str(k) for k in kinds]
        return self._joined(
            lambda q: q.where(_Event.kind.in_(names),
                              _EventDecision.notified.is_(False)).order_by(_Event.id), limit)

    def event_log(self, kind: str | None = None, limit: int = 100) -> list[EventRecord]:
        """Events, newest first, each with the agent's decision when there is one."""
        return self._joined(
            lambda q: (q.where(_Event.kind == str(kind)) if kind else q).order_by(_Event.id.desc()),
            limit)

    def events_of_run(self, run_id: str, kind: str, limit: int = 1000) -> list[EventRecord]:
        """Events of ``kind`` claimed by (or handled for) run ``run_id``, newest first."""
        return self._joined(
            lambda q: q.where(_EventDecision.run_id == run_id, _Event.kind == str(kind))
            .order_by(_Event.id.desc()), limit)

    @transactional("read events")
    def _joined(self, s: Session, shape: Shape, limit: int) -> list[EventRecord]:
        q = select(_Event, _EventDecision).outerjoin(
            _EventDecision, _EventDecision.event_id == _Event.id)
        rows = s.execute(shape(q).limit(limit)).all()
        return [_event_record(e, None if d is None else EventDecision(
                    event_id=d.event_id, status=DecisionStatus(d.status),
                    decision=d.decision, reason=d.reason, run_id=d.run_id,
                    notified=bool(d.notified), updated_at=aware_or_now(d.updated_at)))
                for e, d in rows]


def _put_decision(s: Session, event_id: int, status: DecisionStatus, decision: str,
                  reason: str, run_id: str | None) -> None:
    row = s.get(_EventDecision, event_id)
    if row is None:
        row = _EventDecision(event_id=event_id, notified=False)
        s.add(row)
    row.status, row.decision, row.reason = status.value, decision, reason
    row.run_id, row.updated_at = run_id, utcnow()


def _event_record(e: _Event, decision: EventDecision | None = None) -> EventRecord:
    return EventRecord(kind=e.kind, payload=e.payload, created_at=aware_or_now(e.created_at),
                       idempotency_key=e.idempotency_key, id=e.id, decision=decision)
