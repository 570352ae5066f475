"""The figures of every monitor check: ``monitor_results``, one row per model version and window.

In the state database (same engine as :class:`~medops.storage.StateStore`), in its own module
like :mod:`medops.storage.received`. A check repeated for the same window end replaces its row,
so a retried scheduled check leaves one row. ``summary`` holds p-values, statistics and live
metrics: numbers and feature names only, never an identifier of an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from medops.storage.engine import Database, transactional


@dataclass
class MonitorRecord:
    model: str
    version: str
    window_start: datetime
    window_end: datetime
    status: str  # ok, drift, insufficient
    n_current: int
    n_reference: int = 0
    n_labelled: int = 0
    drift: bool = False
    min_p_value: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    report: str | None = None  # the HTML report's path
    created_at: datetime | None = None
    id: int | None = None


class _Base(DeclarativeBase):
    pass


class _Result(_Base):
    __tablename__ = "monitor_results"
    __table_args__ = (UniqueConstraint("model", "version", "window_end"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[str] = mapped_column(String(64))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    status: Mapped[str] = mapped_column(String(16))
    n_current: Mapped[int] = mapped_column(Integer)
    n_reference: Mapped[int] = mapped_column(Integer)
    n_labelled: Mapped[int] = mapped_column(Integer)
    drift: Mapped[bool] = mapped_column(Boolean)
    min_p_value: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    report: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


_FIELDS = ("window_start", "status", "n_current", "n_reference", "n_labelled", "drift",
           "min_p_value", "summary", "report")


class MonitorResults:
    """Rows of ``monitor_results`` in the state database ``db``; every call is one
    transaction, retried on a lost connection like the state store's."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(_Base.metadata.sorted_tables)

    @transactional("store a monitor result", integrity_passes=False)
    def record(self, s: Session, r: MonitorRecord) -> int:
        """Store ``r`` (replacing the row of the same model, version and window end); its id."""
        row = s.scalar(select(_Result).where(
            _Result.model == r.model, _Result.version == r.version,
            _Result.window_end == r.window_end))
        if row is None:
            row = _Result(model=r.model, version=r.version, window_end=r.window_end)
            s.add(row)
        for name in _FIELDS:
            setattr(row, name, getattr(r, name))
        row.created_at = datetime.now(timezone.utc)
        s.flush()
        return int(row.id)

    @transactional("read monitor results", integrity_passes=False)
    def history(self, s: Session, model: str, version: str | None = None,
                limit: int = 200) -> list[MonitorRecord]:
        """The latest ``limit`` checks of ``model`` (of one version), oldest first."""
        q = select(_Result).where(_Result.model == model)
        if version is not None:
            q = q.where(_Result.version == version)
        rows = list(s.scalars(q.order_by(_Result.window_end.desc()).limit(limit)))
        return [_record(r) for r in reversed(rows)]


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def _record(r: _Result) -> MonitorRecord:
    return MonitorRecord(model=r.model, version=r.version,
                         window_start=_aware(r.window_start), window_end=_aware(r.window_end),
                         status=r.status, n_current=r.n_current, n_reference=r.n_reference,
                         n_labelled=r.n_labelled, drift=r.drift, min_p_value=r.min_p_value,
                         summary=dict(r.summary or {}), report=r.report,
                         created_at=_aware(r.created_at), id=r.id)
