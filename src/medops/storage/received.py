"""The index of instances the DICOM receiver stored: ``received_instances``.

A row is written only after its file is on disk and fsynced, and before the sender hears
success; a series' rows move from ``received`` to ``ingested`` once the ingester took them, so a
restarted receiver knows what it still owes. Rows carry hashes of the UIDs, never the UIDs.
The table lives in the state database (same engine as :class:`~medops.storage.StateStore`) but
in its own module, so the receiver's bookkeeping stays out of the general store.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Integer, String, Text, UniqueConstraint, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from medops.storage.engine import Database, transactional


class ReceivedStatus(str, enum.Enum):
    RECEIVED = "received"  # on disk and indexed; its series is not ingested yet
    INGESTED = "ingested"  # handed to the ingester
    MISSING = "missing"  # indexed, but the file was gone when its series was ingested
    PURGED = "purged"  # ingested, then its file deleted (``keep_received``)


@dataclass(frozen=True)
class ReceivedInstance:
    source: str
    sop_hash: str
    series_hash: str
    study_hash: str
    path: str  # relative to the receiver's storage folder
    size: int
    calling_ae: str | None  # None: found on disk at startup (indexed after a crash)
    label: str | None = None
    status: ReceivedStatus = ReceivedStatus.RECEIVED
    received_at: datetime | None = None
    id: int | None = None


class _Base(DeclarativeBase):
    pass


class _Received(_Base):
    __tablename__ = "received_instances"
    __table_args__ = (UniqueConstraint("source", "sop_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(255))
    sop_hash: Mapped[str] = mapped_column(String(64))
    series_hash: Mapped[str] = mapped_column(String(64), index=True)
    study_hash: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ingested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ReceivedIndex:
    """Rows of ``received_instances`` in the state database ``db``; every call is one
    transaction, retried on a lost connection like the state store's."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(_Base.metadata.sorted_tables)

    def add(self, inst: ReceivedInstance) -> bool:
        """Index ``inst``; False when that SOP instance is already indexed (a duplicate)."""
        try:
            self._add(inst)
        except IntegrityError:
            return False
        return True

    @transactional("index a received instance")
    def _add(self, s: Session, inst: ReceivedInstance) -> None:
        s.add(_Received(source=inst.source, sop_hash=inst.sop_hash,
                        series_hash=inst.series_hash, study_hash=inst.study_hash,
                        path=inst.path, size=inst.size, calling_ae=inst.calling_ae,
                        label=inst.label, status=inst.status.value,
                        received_at=inst.received_at or _utcnow()))

    @transactional("look up a received instance")
    def contains(self, s: Session, source: str, sop_hash: str) -> bool:
        return s.scalar(select(_Received.id).where(
            _Received.source == source, _Received.sop_hash == sop_hash)) is not None

    @transactional("list received paths")
    def paths(self, s: Session, source: str) -> set[str]:
        """Every indexed path of ``source`` (to find files on disk that are not indexed)."""
        return set(s.scalars(select(_Received.path).where(_Received.source == source)))

    @transactional("list received instances")
    def pending(self, s: Session, source: str,
                series_hash: str | None = None) -> list[ReceivedInstance]:
        """Instances not yet ingested, in arrival order (of one series, or all)."""
        q = select(_Received).where(_Received.source == source,
                                    _Received.status == ReceivedStatus.RECEIVED.value)
        if series_hash is not None:
            q = q.where(_Received.series_hash == series_hash)
        return [_record(r) for r in s.scalars(q.order_by(_Received.id))]

    @transactional("list received instances")
    def instances(self, s: Session, source: str) -> list[ReceivedInstance]:
        q = select(_Received).where(_Received.source == source).order_by(_Received.id)
        return [_record(r) for r in s.scalars(q)]

    @transactional("list received instances")
    def ingested_before(self, s: Session, source: str, cutoff: datetime,
                        limit: int = 1000) -> list[ReceivedInstance]:
        """Ingested instances (files still kept) ingested at or before ``cutoff``, oldest first."""
        q = (select(_Received)
             .where(_Received.source == source,
                    _Received.status == ReceivedStatus.INGESTED.value,
                    _Received.ingested_at <= cutoff)
             .order_by(_Received.ingested_at, _Received.id).limit(limit))
        return [_record(r) for r in s.scalars(q)]

    @transactional("mark received instances")
    def mark(self, s: Session, source: str, sop_hashes: Iterable[str],
             status: ReceivedStatus) -> None:
        hashes = list(sop_hashes)
        values: dict[str, Any] = {"status": status.value}
        if status is ReceivedStatus.INGESTED:
            values["ingested_at"] = _utcnow()
        for start in range(0, len(hashes), 500):  # keep IN (...) under SQLite's limits
            s.execute(update(_Received).where(
                _Received.source == source,
                _Received.sop_hash.in_(hashes[start:start + 500]),
            ).values(**values))

    @transactional("count received instances")
    def counts(self, s: Session, source: str) -> dict[str, int]:
        """{status: number of instances} for ``source``."""
        rows = s.execute(select(_Received.status, func.count())
                         .where(_Received.source == source)
                         .group_by(_Received.status)).all()
        return {status: count for status, count in rows}


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def _record(r: _Received) -> ReceivedInstance:
    return ReceivedInstance(source=r.source, sop_hash=r.sop_hash, series_hash=r.series_hash,
                            study_hash=r.study_hash, path=r.path, size=r.size,
                            calling_ae=r.calling_ae, label=r.label,
                            status=ReceivedStatus(r.status),
                            received_at=_aware(r.received_at), id=r.id)
