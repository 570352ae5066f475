"""Runs and their steps, and who holds each running run (owner and heartbeat).

A running run has an *owner* (see :mod:`medops.storage.liveness`) that beats: it writes
``heartbeat_at`` (the database's clock) every few seconds and the time after which it counts
as dead (``stale_after`` seconds). Any process, on any machine, may judge a run whose heartbeat
is stale to be ``interrupted`` (:meth:`RunStore.mark_dead_runs_interrupted`); a resume takes it
with a compare-and-set, so two processes never both continue it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from medops.errors import NotFoundError
from medops.storage.base import Base, aware, aware_or_now, tables
from medops.storage.engine import Database, transactional
from medops.storage.liveness import DEFAULT_BEAT, STALE_BEATS, Owner, pid_alive, process_owner
from medops.storage.records import RunRecord, RunStatus, StepRecord, StepStatus


class _Run(Base):
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
    owner: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stale_after: Mapped[float | None] = mapped_column(Float)  # seconds without a beat


class _Step(Base):
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


TABLES = tables(_Run, _Step)
DEFAULT_STALE = DEFAULT_BEAT * STALE_BEATS


def _held_by_me(db: Database, s: Session, stale_after: float) -> dict[str, Any]:
    owner = process_owner()
    who = Owner.parse(owner)
    return {"status": RunStatus.RUNNING.value, "owner": owner, "pid": who.pid,
            "host": who.host, "heartbeat_at": db.now(s), "stale_after": stale_after}


def add_run(db: Database, s: Session, run_id: str, trigger: str, config: dict[str, Any],
            steps: Sequence[str], stale_after: float = DEFAULT_STALE) -> None:
    """Insert a running run held by this process, with its pending steps (in ``s``, so the
    caller can make other rows in the same transaction)."""
    s.add(_Run(id=run_id, trigger=trigger, config=config, started_at=db.now(s),
               **_held_by_me(db, s, stale_after)))
    s.flush()
    for seq, name in enumerate(steps):
        s.add(_Step(run_id=run_id, name=name, seq=seq, status=StepStatus.PENDING.value,
                    attempts=0, outputs={}))


class RunStore:
    """Runs and steps on ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(TABLES)

    def create_run(self, run_id: str, trigger: str, config: dict[str, Any],
                   steps: Sequence[str], stale_after: float = DEFAULT_STALE) -> RunRecord:
        self._create(run_id, trigger, config, steps, stale_after)
        return self.get_run(run_id)

    @transactional("create run")
    def _create(self, s: Session, run_id: str, trigger: str, config: dict[str, Any],
                steps: Sequence[str], stale_after: float) -> None:
        add_run(self.db, s, run_id, trigger, config, steps, stale_after)

    @transactional("read run")
    def get_run(self, s: Session, run_id: str) -> RunRecord:
        """A run by id, or by a unique start of its id."""
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
        return _load(s, row)

    @transactional("list runs")
    def list_runs(self, s: Session, limit: int = 50) -> list[RunRecord]:
        rows = s.scalars(select(_Run).order_by(_Run.started_at.desc()).limit(limit)).all()
        return [_load(s, r) for r in rows]

    @transactional("claim run")
    def claim_run(self, s: Session, run_id: str, stale_after: float = DEFAULT_STALE) -> None:
        """Mark ``run_id`` as running in this process (for a resume)."""
        s.execute(update(_Run).where(_Run.id == run_id).values(
            finished_at=None, error=None, **_held_by_me(self.db, s, stale_after)))

    @transactional("take run")
    def take_run(self, s: Session, run_id: str, status: RunStatus, pid: int | None = None,
                 owner: str | None = None, stale_after: float = DEFAULT_STALE) -> bool:
        """Compare-and-set: hold ``run_id`` in this process only if it is still ``status``
        (and held by ``pid`` / ``owner``, when given). False: someone else has it."""
        q = update(_Run).where(_Run.id == run_id, _Run.status == status.value)
        if pid is not None:
            q = q.where(_Run.pid == pid)
        if owner is not None:
            q = q.where(_Run.owner == owner)
        result = s.execute(q.values(finished_at=None, error=None,
                                    **_held_by_me(self.db, s, stale_after)))
        return bool(getattr(result, "rowcount", 0) == 1)

    @transactional("finish run")
    def finish_run(self, s: Session, run_id: str, status: RunStatus, error: str | None = None,
                   owner: str | None = None) -> bool:
        """Record how ``run_id`` ended; with ``owner``, only while that owner holds it (a
        process judged dead must not overwrite the run another took over). False: not done."""
        q = update(_Run).where(_Run.id == run_id)
        if owner is not None:
            q = q.where(_Run.owner == owner)
        result = s.execute(q.values(status=status.value, finished_at=self.db.now(s),
                                    error=error))
        return bool(getattr(result, "rowcount", 0) == 1)

    @transactional("update run")
    def set_run_fields(self, s: Session, run_id: str, **fields: Any) -> None:
        s.execute(update(_Run).where(_Run.id == run_id).values(**fields))

    @transactional("update step")
    def update_step(self, s: Session, run_id: str, name: str, **fields: Any) -> None:
        values = {k: (v.value if isinstance(v, StepStatus) else v) for k, v in fields.items()}
        s.execute(update(_Step).where(_Step.run_id == run_id, _Step.name == name)
                  .values(**values))

    @transactional("heartbeat")
    def beat(self, s: Session, owner: str, run_id: str | None = None,
             stale_after: float | None = None) -> int:
        """``owner`` is alive: refresh the heartbeat of its running runs (of ``run_id`` only,
        when given). Returns how many it holds: 0 for ``run_id`` means it lost that run."""
        q = update(_Run).where(_Run.owner == owner, _Run.status == RunStatus.RUNNING.value)
        if run_id is not None:
            q = q.where(_Run.id == run_id)
        values: dict[str, Any] = {"heartbeat_at": self.db.now(s)}
        if stale_after is not None:
            values["stale_after"] = stale_after
        return int(getattr(s.execute(q.values(**values)), "rowcount", 0))

    @transactional("reap dead runs")
    def mark_dead_runs_interrupted(self, s: Session) -> list[str]:
        """Running runs whose owner is dead become ``interrupted``: a heartbeat older than its
        ``stale_after`` (any host), or at once a run of this node whose pid is gone. Rows of a
        medops without heartbeats are judged by pid when their host is this one."""
        now = self.db.now(s)
        me = Owner.parse(process_owner())
        dead: list[str] = []
        for row in s.scalars(select(_Run).where(_Run.status == RunStatus.RUNNING.value)).all():
            beat = aware(row.heartbeat_at)
            # pids mean something only on the owner's node (a medops without owners: host)
            here = Owner.parse(row.owner).node == me.node if row.owner else row.host == me.host
            if here and row.pid is not None and not pid_alive(row.pid):
                why = "its process is gone"
            elif beat is not None and row.stale_after is not None \
                    and beat + timedelta(seconds=row.stale_after) < now:
                why = "its heartbeat stopped"
            else:
                continue
            # Compare-and-set: a beat or a take-over since the read keeps the run alive.
            q = update(_Run).where(_Run.id == row.id, _Run.status == RunStatus.RUNNING.value,
                                   _same(_Run.owner, row.owner),
                                   _same(_Run.heartbeat_at, row.heartbeat_at))
            result = s.execute(q.values(status=RunStatus.INTERRUPTED.value,
                                        error=f"interrupted: {why}"),
                               execution_options={"synchronize_session": False})
            if getattr(result, "rowcount", 0) == 1:
                dead.append(row.id)
        return dead

    @transactional("list runs")
    def run_ids(self, s: Session, status: RunStatus) -> list[str]:
        return list(s.scalars(select(_Run.id).where(_Run.status == status.value)))

    @transactional("list runs")
    def last_run_finished_at(self, s: Session) -> datetime | None:
        return aware(s.scalar(select(func.max(_Run.finished_at))))


def _same(column: Any, value: Any) -> Any:
    return column.is_(None) if value is None else column == value


def _load(s: Session, row: _Run) -> RunRecord:
    steps = s.scalars(select(_Step).where(_Step.run_id == row.id).order_by(_Step.seq))
    return RunRecord(
        id=row.id, status=RunStatus(row.status), trigger=row.trigger, config=row.config,
        started_at=aware_or_now(row.started_at), finished_at=aware(row.finished_at),
        error=row.error, pid=row.pid, host=row.host, mlflow_run_id=row.mlflow_run_id,
        owner=row.owner, heartbeat_at=aware(row.heartbeat_at),
        steps=[StepRecord(run_id=st.run_id, name=st.name, seq=st.seq,
                          status=StepStatus(st.status), attempts=st.attempts,
                          started_at=aware(st.started_at), finished_at=aware(st.finished_at),
                          error=st.error, outputs=st.outputs or {}) for st in steps],
    )
