"""The state store: runs, steps, items, split groups, events and the audit log (SQLAlchemy 2).

SQLite by default, PostgreSQL at scale: the same models, chosen by the URL. The ORM rows below
never leave this module; callers get the plain records of :mod:`medops.storage.records`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from medops.errors import DependencyMissingError, NotFoundError, StoreError
from medops.storage.records import (
    AuditEntry,
    DecisionStatus,
    DeploymentRecord,
    EventDecision,
    EventRecord,
    Item,
    ItemStatus,
    RunRecord,
    RunStatus,
    Split,
    StepRecord,
    StepStatus,
)
from medops.storage.session import transaction


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Base(DeclarativeBase):
    pass


class _Run(_Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))


class _Step(_Base):
    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("run_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class _Item(_Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("uri", "frame"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uri: Mapped[str] = mapped_column(String(2048))
    frame: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(255), index=True)
    label: Mapped[str | None] = mapped_column(String(255))
    patient_id: Mapped[str | None] = mapped_column(String(255))
    study_uid: Mapped[str | None] = mapped_column(String(128))
    series_uid: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    split: Mapped[str | None] = mapped_column(String(8))
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _SplitGroup(_Base):
    """The split each group (patient, study or item) was given, once and for all."""

    __tablename__ = "split_groups"
    group_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    split: Mapped[str] = mapped_column(String(8))
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Event(_Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _EventDecision(_Base):
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


class _Cursor(_Base):
    """Where each polled source stopped: stored only once what it covers is ingested."""

    __tablename__ = "cursors"
    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Audit(_Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class _Deployment(_Base):
    """Which version was live when: MLflow aliases only know the present."""

    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[str] = mapped_column(String(32))
    live_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    live_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(255))
    note: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(32))


def _aware(dt: datetime | None) -> datetime | None:
    # SQLite drops the timezone; every timestamp medops writes is UTC.
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers (`medops runs ls`) work while a run writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise DependencyMissingError(exc.name or "psycopg", "postgres", "PostgreSQL") from exc


class StateStore:
    """Runs, steps, items, split groups, events and the audit log, in one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._engine = _make_engine(url)
            _Base.metadata.create_all(self._engine)
        except OperationalError as exc:
            raise StoreError(
                f"cannot open the state store {make_url(url).render_as_string()}: {exc.orig}; "
                "check storage.state in medops.yaml"
            ) from exc
        self._session = sessionmaker(self._engine, expire_on_commit=False)

    def close(self) -> None:
        self._engine.dispose()

    @property
    def engine(self) -> Engine:
        """The engine, for tables kept in their own modules (e.g. storage/received.py)."""
        return self._engine

    def _tx(self) -> AbstractContextManager[Session]:
        return transaction(self._session, "state")

    # -- runs and steps -------------------------------------------------------------------
    def create_run(self, run_id: str, trigger: str, config: dict[str, Any],
                   steps: Sequence[str]) -> RunRecord:
        with self._tx() as s:
            self._add_run(s, run_id, trigger, config, steps)
        return self.get_run(run_id)

    @staticmethod
    def _add_run(s: Session, run_id: str, trigger: str, config: dict[str, Any],
                 steps: Sequence[str]) -> None:
        s.add(_Run(id=run_id, status=RunStatus.RUNNING.value, trigger=trigger,
                   config=config, started_at=utcnow(), pid=os.getpid(),
                   host=socket.gethostname()))
        s.flush()
        for seq, name in enumerate(steps):
            s.add(_Step(run_id=run_id, name=name, seq=seq,
                        status=StepStatus.PENDING.value, attempts=0, outputs={}))

    def get_run(self, run_id: str) -> RunRecord:
        with self._tx() as s:
            row = s.get(_Run, run_id)
            if row is None:
                by_prefix = _Run.id.startswith(run_id, autoescape=True)
                matches = s.scalars(select(_Run).where(by_prefix).order_by(_Run.id).limit(4)).all()
                if not matches:
                    raise NotFoundError(f"no run {run_id!r}; `medops runs ls` lists them")
                if len(matches) > 1:
                    some = ", ".join(m.id for m in matches[:3])
                    raise NotFoundError(f"{run_id!r} is the start of several runs ({some}"
                                        f"{', ...' if len(matches) > 3 else ''}); give more of "
                                        "the id")
                row = matches[0]
            steps = s.scalars(select(_Step).where(_Step.run_id == row.id).order_by(_Step.seq))
            return self._run(row, list(steps))

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        with self._tx() as s:
            rows = s.scalars(select(_Run).order_by(_Run.started_at.desc()).limit(limit)).all()
            return [self.get_run(r.id) for r in rows]

    def claim_run(self, run_id: str) -> None:
        """Mark ``run_id`` as running in this process (for a resume)."""
        with self._tx() as s:
            s.execute(update(_Run).where(_Run.id == run_id).values(
                status=RunStatus.RUNNING.value, pid=os.getpid(), host=socket.gethostname(),
                finished_at=None, error=None))

    def take_run(self, run_id: str, status: RunStatus, pid: int | None = None) -> bool:
        """Compare-and-set: mark ``run_id`` running in this process only if it is still
        ``status`` (and held by ``pid``, when given). False: someone else has it."""
        with self._tx() as s:
            q = update(_Run).where(_Run.id == run_id, _Run.status == status.value)
            if pid is not None:
                q = q.where(_Run.pid == pid)
            result = s.execute(q.values(status=RunStatus.RUNNING.value, pid=os.getpid(),
                                        host=socket.gethostname(), finished_at=None,
                                        error=None))
            return bool(getattr(result, "rowcount", 0) == 1)

    def finish_run(self, run_id: str, status: RunStatus, error: str | None = None) -> None:
        with self._tx() as s:
            s.execute(update(_Run).where(_Run.id == run_id).values(
                status=status.value, finished_at=utcnow(), error=error))

    def set_run_fields(self, run_id: str, **fields: Any) -> None:
        with self._tx() as s:
            s.execute(update(_Run).where(_Run.id == run_id).values(**fields))

    def update_step(self, run_id: str, name: str, **fields: Any) -> None:
        values = {k: (v.value if isinstance(v, StepStatus) else v) for k, v in fields.items()}
        with self._tx() as s:
            s.execute(update(_Step).where(_Step.run_id == run_id, _Step.name == name)
                      .values(**values))

    def mark_dead_runs_interrupted(self) -> list[str]:
        """Runs marked running whose process on this host is gone become ``interrupted``."""
        host = socket.gethostname()
        dead: list[str] = []
        with self._tx() as s:
            for row in s.scalars(select(_Run).where(_Run.status == RunStatus.RUNNING.value)):
                if row.host == host and row.pid is not None and not _pid_alive(row.pid):
                    row.status = RunStatus.INTERRUPTED.value
                    dead.append(row.id)
        return dead

    @staticmethod
    def _run(row: _Run, steps: list[_Step]) -> RunRecord:
        return RunRecord(
            id=row.id, status=RunStatus(row.status), trigger=row.trigger, config=row.config,
            started_at=_aware(row.started_at) or utcnow(), finished_at=_aware(row.finished_at),
            error=row.error, pid=row.pid, host=row.host, mlflow_run_id=row.mlflow_run_id,
            steps=[StepRecord(run_id=st.run_id, name=st.name, seq=st.seq,
                              status=StepStatus(st.status), attempts=st.attempts,
                              started_at=_aware(st.started_at),
                              finished_at=_aware(st.finished_at), error=st.error,
                              outputs=st.outputs or {}) for st in steps],
        )

    # -- items ----------------------------------------------------------------------------
    def upsert_items(self, items: Iterable[Item]) -> tuple[int, int]:
        """Add new items, refresh changed ones (same URI, new content). Returns (new, changed)."""
        new = changed = 0
        with self._tx() as s:
            for item in items:
                row = s.scalars(select(_Item).where(
                    _Item.uri == item.uri,
                    _Item.frame.is_(None) if item.frame is None else _Item.frame == item.frame,
                )).first()
                if row is None:
                    s.add(self._item_row(item))
                    new += 1
                elif row.content_hash != item.content_hash or row.label != item.label:
                    for key, value in self._item_row(item).__dict__.items():
                        if not key.startswith("_") and key not in ("id", "created_at"):
                            setattr(row, key, value)
                    changed += 1
        return new, changed

    def items(self, status: ItemStatus | None = None, source: str | None = None) -> list[Item]:
        with self._tx() as s:
            q = select(_Item).order_by(_Item.id)
            if status is not None:
                q = q.where(_Item.status == status.value)
            if source is not None:
                q = q.where(_Item.source == source)
            return [self._item(r) for r in s.scalars(q)]

    def update_items(self, updates: Iterable[tuple[int, dict[str, Any]]]) -> None:
        with self._tx() as s:
            for item_id, fields in updates:
                values = {k: (v.value if isinstance(v, (ItemStatus, Split)) else v)
                          for k, v in fields.items()}
                s.execute(update(_Item).where(_Item.id == item_id).values(**values))

    def item_counts(self) -> dict[str, dict[str, int]]:
        """{source: {status: count}}."""
        with self._tx() as s:
            rows = s.execute(select(_Item.source, _Item.status, func.count())
                             .group_by(_Item.source, _Item.status)).all()
        out: dict[str, dict[str, int]] = {}
        for source, status, count in rows:
            out.setdefault(source, {})[status] = count
        return out

    @staticmethod
    def _item_row(item: Item) -> _Item:
        return _Item(uri=item.uri, frame=item.frame, content_hash=item.content_hash,
                     source=item.source, label=item.label, patient_id=item.patient_id,
                     study_uid=item.study_uid, series_uid=item.series_uid,
                     status=item.status.value, reason=item.reason,
                     split=item.split.value if item.split else None, info=item.info,
                     created_at=utcnow())

    @staticmethod
    def _item(r: _Item) -> Item:
        return Item(uri=r.uri, content_hash=r.content_hash, source=r.source, frame=r.frame,
                    label=r.label, patient_id=r.patient_id, study_uid=r.study_uid,
                    series_uid=r.series_uid, status=ItemStatus(r.status), reason=r.reason,
                    split=Split(r.split) if r.split else None, info=r.info or {}, id=r.id)

    # -- split groups ---------------------------------------------------------------------
    def split_groups(self) -> dict[str, Split]:
        with self._tx() as s:
            return {g.group_key: Split(g.split) for g in s.scalars(select(_SplitGroup))}

    def assign_split_groups(self, assignments: dict[str, Split]) -> None:
        """Record new groups' splits; a group that already has one keeps it."""
        with self._tx() as s:
            known = set(s.scalars(select(_SplitGroup.group_key)))
            now = utcnow()
            for key, split in assignments.items():
                if key not in known:
                    s.add(_SplitGroup(group_key=key, split=split.value, assigned_at=now))

    # -- source cursors -------------------------------------------------------------------
    def get_cursor(self, source: str) -> str | None:
        with self._tx() as s:
            row = s.get(_Cursor, source)
            return row.cursor if row else None

    def set_cursor(self, source: str, cursor: str) -> None:
        with self._tx() as s:
            row = s.get(_Cursor, source)
            if row is None:
                s.add(_Cursor(source=source, cursor=cursor, updated_at=utcnow()))
            else:
                row.cursor, row.updated_at = cursor, utcnow()

    def cursors(self) -> dict[str, tuple[str, datetime]]:
        """{source: (cursor, updated_at)}."""
        with self._tx() as s:
            return {r.source: (r.cursor, _aware(r.updated_at) or utcnow())
                    for r in s.scalars(select(_Cursor).order_by(_Cursor.source))}

    # -- events and audit -----------------------------------------------------------------
    def add_event(self, kind: str, payload: dict[str, Any],
                  idempotency_key: str | None = None) -> EventRecord | None:
        """Store an event durably. A duplicate idempotency key stores nothing: returns None."""
        try:
            with self._tx() as s:
                row = _Event(kind=str(kind), payload=payload, idempotency_key=idempotency_key,
                             created_at=utcnow())
                s.add(row)
                s.flush()
                return EventRecord(kind=kind, payload=payload, created_at=row.created_at,
                                   idempotency_key=idempotency_key, id=row.id)
        except IntegrityError:
            return None

    def keyed_events(self, key_prefix: str, up_to_id: int) -> list[EventRecord]:
        """Events whose idempotency key starts with ``key_prefix`` (one series, such as one
        model version's drift), with ids up to ``up_to_id``, oldest first."""
        with self._tx() as s:
            q = (select(_Event)
                 .where(_Event.idempotency_key.startswith(key_prefix, autoescape=True),
                        _Event.id <= up_to_id)
                 .order_by(_Event.id))
            return [_event_record(e) for e in s.scalars(q)]

    # -- event decisions (the agent's processing state; see medops.agent) ---------------------
    def decide_event(self, event_id: int, status: DecisionStatus, decision: str, reason: str,
                     run_id: str | None = None) -> None:
        """Record what was decided about ``event_id``, replacing an earlier decision."""
        with self._tx() as s:
            self._put_decision(s, event_id, status, decision, reason, run_id)

    def claim_events_for_run(self, run_id: str, trigger: str, config: dict[str, Any],
                             steps: Sequence[str], claims: dict[int, tuple[str, str]]) -> bool:
        """Create run ``run_id`` and claim events for it ({event id: (decision, reason)}) in
        one transaction, so a crash leaves both or neither. False if the run already exists."""
        try:
            with self._tx() as s:
                self._add_run(s, run_id, trigger, config, steps)
                for event_id, (decision, reason) in claims.items():
                    self._put_decision(s, event_id, DecisionStatus.CLAIMED, decision, reason,
                                       run_id)
        except IntegrityError:
            return False
        return True

    def release_claims(self, run_id: str) -> None:
        """The events claimed by ``run_id`` are handled (its run finished)."""
        with self._tx() as s:
            s.execute(update(_EventDecision).where(
                _EventDecision.run_id == run_id,
                _EventDecision.status == DecisionStatus.CLAIMED.value,
            ).values(status=DecisionStatus.HANDLED.value, updated_at=utcnow()))

    def mark_notified(self, event_id: int) -> None:
        with self._tx() as s:
            s.execute(update(_EventDecision).where(_EventDecision.event_id == event_id)
                      .values(notified=True))

    def open_events(self, after_id: int = 0, limit: int = 1000) -> list[EventRecord]:
        """Events not yet handled (never seen, waiting or claimed), oldest first."""
        return self._events_joined(
            lambda q: q.where(_Event.id > after_id, or_(
                _EventDecision.event_id.is_(None),
                _EventDecision.status != DecisionStatus.HANDLED.value)).order_by(_Event.id),
            limit)

    def unnotified_events(self, kinds: Sequence[str], limit: int = 1000) -> list[EventRecord]:
        """Decided events of ``kinds`` whose notification was not sent yet, oldest first."""
        return self._events_joined(
            lambda q: q.where(_Event.kind.in_([str(k) for k in kinds]),
                              _EventDecision.notified.is_(False)).order_by(_Event.id), limit)

    def event_log(self, kind: str | None = None, limit: int = 100) -> list[EventRecord]:
        """Events, newest first, each with the agent's decision when there is one."""
        return self._events_joined(
            lambda q: (q.where(_Event.kind == str(kind)) if kind else q).order_by(_Event.id.desc()),
            limit)

    def run_ids(self, status: RunStatus) -> list[str]:
        with self._tx() as s:
            return list(s.scalars(select(_Run.id).where(_Run.status == status.value)))

    def last_run_finished_at(self) -> datetime | None:
        with self._tx() as s:
            return _aware(s.scalar(select(func.max(_Run.finished_at))))

    def _events_joined(self, shape: Any, limit: int) -> list[EventRecord]:
        with self._tx() as s:
            q = select(_Event, _EventDecision).outerjoin(
                _EventDecision, _EventDecision.event_id == _Event.id)
            rows = s.execute(shape(q).limit(limit)).all()
            return [_event_record(e, None if d is None else EventDecision(
                        event_id=d.event_id, status=DecisionStatus(d.status),
                        decision=d.decision, reason=d.reason, run_id=d.run_id,
                        notified=bool(d.notified), updated_at=_aware(d.updated_at) or utcnow()))
                    for e, d in rows]

    @staticmethod
    def _put_decision(s: Session, event_id: int, status: DecisionStatus, decision: str,
                      reason: str, run_id: str | None) -> None:
        row = s.get(_EventDecision, event_id)
        if row is None:
            row = _EventDecision(event_id=event_id, notified=False)
            s.add(row)
        row.status, row.decision, row.reason = status.value, decision, reason
        row.run_id, row.updated_at = run_id, utcnow()

    def audit(self, action: str, actor: str, target: str, details: dict[str, Any]) -> None:
        with self._tx() as s:
            s.add(_Audit(at=utcnow(), actor=actor, action=action, target=target, details=details))

    def audit_log(self, target: str | None = None, limit: int = 100) -> list[AuditEntry]:
        with self._tx() as s:
            q = select(_Audit).order_by(_Audit.id.desc()).limit(limit)
            if target:
                q = q.where(_Audit.target == target)
            return [AuditEntry(action=a.action, actor=a.actor, target=a.target,
                               details=a.details, at=_aware(a.at) or utcnow(), id=a.id)
                    for a in s.scalars(q)]

    # -- deployments ----------------------------------------------------------------------
    def record_deployment(self, model: str, version: str, actor: str, note: str, action: str,
                          at: datetime | None = None) -> DeploymentRecord:
        """``version`` of ``model`` is live from ``at`` (now); the live one before it ends then."""
        at = at or utcnow()
        with self._tx() as s:
            s.execute(update(_Deployment).where(_Deployment.model == model,
                                                _Deployment.live_until.is_(None))
                      .values(live_until=at))
            row = _Deployment(model=model, version=version, live_from=at, live_until=None,
                              actor=actor, note=note, action=action)
            s.add(row)
            s.flush()
            return self._deployment(row)

    def deployments(self, model: str) -> list[DeploymentRecord]:
        """Every period a version of ``model`` was live, oldest first."""
        with self._tx() as s:
            q = select(_Deployment).where(_Deployment.model == model).order_by(_Deployment.id)
            return [self._deployment(r) for r in s.scalars(q)]

    def live_deployment(self, model: str, at: datetime | None = None) -> DeploymentRecord | None:
        """The deployment of ``model`` live at ``at`` (now), or None."""
        at = at or utcnow()
        return next((d for d in reversed(self.deployments(model)) if d.live_at(at)), None)

    @staticmethod
    def _deployment(r: _Deployment) -> DeploymentRecord:
        return DeploymentRecord(model=r.model, version=r.version,
                                live_from=_aware(r.live_from) or utcnow(),
                                live_until=_aware(r.live_until), actor=r.actor, note=r.note,
                                action=r.action, id=r.id)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet (a zombie) is dead all the same
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _event_record(e: _Event, decision: EventDecision | None = None) -> EventRecord:
    return EventRecord(kind=e.kind, payload=e.payload, created_at=_aware(e.created_at) or utcnow(),
                       idempotency_key=e.idempotency_key, id=e.id, decision=decision)
