"""The audit log, a hash chain: changing, inserting or deleting a row after the fact shows.

Each row stores ``prev_hash`` (the hash of the row before it, ``""`` for the first) and
``hash`` = sha256 over a canonical JSON of (prev_hash, action, actor, target, details, at). The
chain's head (the last hash and the number of rows) lives in its own one-row table,
``audit_chain``, so deleting rows at the end shows too.

Appends are serialized so that two writers never fork the chain: an append's first statement
updates the head row, which takes the write lock on SQLite (no other writer until commit) and
locks the row on PostgreSQL (the next appender waits, then reads the new head). The head row is
made, and rows written by a medops that had no chain are sealed into it, by the first append.

This makes tampering *detectable* by :meth:`AuditTrail.verify` (`medops models history
--verify`); someone who can rewrite every row after the one they change and the head too can
forge a consistent chain, so keep a copy of the head hash elsewhere when that matters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import JSON, DateTime, Integer, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from medops.storage.base import Base, aware, aware_or_now, tables, utcnow
from medops.storage.engine import Database, transactional
from medops.storage.records import AuditEntry


class _Audit(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))


class _Head(Base):
    """The end of the chain: one row (id 1)."""

    __tablename__ = "audit_chain"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    head: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


TABLES = tables(_Audit, _Head)
T = TypeVar("T")


@dataclass(frozen=True)
class ChainCheck:
    """The result of :meth:`AuditTrail.verify`."""

    rows: int  # rows walked
    broken_id: int | None = None  # the first row that does not fit (None: intact)
    problem: str | None = None  # what differs

    @property
    def intact(self) -> bool:
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        return {"intact": self.intact, "rows": self.rows, "broken_id": self.broken_id,
                "problem": self.problem}


def row_hash(prev_hash: str, action: str, actor: str, target: str, details: Any,
             at: datetime) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, UTC time to the microsecond)."""
    when = at.astimezone(timezone.utc) if at.tzinfo else at.replace(tzinfo=timezone.utc)
    doc = {"prev_hash": prev_hash, "action": action, "actor": actor, "target": target,
           "details": details, "at": when.isoformat(timespec="microseconds")}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def append(db: Database, s: Session, action: str, actor: str, target: str,
           details: dict[str, Any], at: datetime | None = None) -> AuditEntry:
    """Append one row in the caller's transaction (so a deployment and its audit row commit
    together). Serialized by the head row: see the module docstring."""
    head = _lock_head(s)
    # Hash what the database will give back: JSON turns tuples into lists, keys into strings.
    stored = json.loads(json.dumps(details))
    when = aware(at) or utcnow()
    digest = row_hash(head.head, action, actor, target, stored, when)
    row = _Audit(at=when, actor=actor, action=action, target=target, details=stored,
                 prev_hash=head.head, hash=digest)
    s.add(row)
    head.head, head.rows, head.updated_at = digest, head.rows + 1, when
    s.flush()
    return _entry(row)


def first_append_retried(write: Callable[[], T]) -> T:
    """``write`` (a transaction that appends), once more if it failed because another process
    started the chain at the same moment (PostgreSQL: both inserted the head row)."""
    try:
        return write()
    except IntegrityError:
        return write()


def _lock_head(s: Session) -> _Head:
    locked = s.execute(update(_Head).where(_Head.id == 1).values(rows=_Head.rows))
    if getattr(locked, "rowcount", 0) == 0:  # the first append: start the chain
        head = _Head(id=1, head="", rows=0, updated_at=utcnow())
        for row in s.scalars(select(_Audit).where(_Audit.hash.is_(None)).order_by(_Audit.id)):
            row.prev_hash = head.head  # rows from before the chain are sealed as they are
            row.hash = head.head = row_hash(head.head, row.action, row.actor, row.target,
                                            row.details, aware_or_now(row.at))
            head.rows += 1
        s.add(head)
        s.flush()
        return head
    locked_head = s.get(_Head, 1, populate_existing=True)
    assert locked_head is not None
    return locked_head


class AuditTrail:
    """The audit log on ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(TABLES)

    def audit(self, action: str, actor: str, target: str,
              details: dict[str, Any]) -> AuditEntry:
        """Append a row: who did what to which target, and the particulars."""
        return first_append_retried(lambda: self._append(action, actor, target, details))

    @transactional("audit")
    def _append(self, s: Session, action: str, actor: str, target: str,
                details: dict[str, Any]) -> AuditEntry:
        return append(self.db, s, action, actor, target, details)

    @transactional("read audit log")
    def audit_log(self, s: Session, target: str | None = None,
                  limit: int = 100) -> list[AuditEntry]:
        """Rows, newest first (of one target)."""
        q = select(_Audit).order_by(_Audit.id.desc()).limit(limit)
        if target:
            q = q.where(_Audit.target == target)
        return [_entry(a) for a in s.scalars(q)]

    @transactional("verify audit chain", integrity_passes=False)
    def verify(self, s: Session) -> ChainCheck:
        """Walk the chain from its first row; the first row that does not fit, and why.
        A log from before the chain existed is sealed first (as the first append would)."""
        head = s.get(_Head, 1) or _lock_head(s)
        expected, previous_id, n = "", None, 0
        for row in _rows(s):
            n += 1
            after = f"row {previous_id}" if previous_id is not None else "the start of the log"
            if row.hash is None:
                return ChainCheck(n, row.id, "it has no hash: written by hand or by a medops "
                                             "without the hash chain")
            if row.prev_hash != expected:
                return ChainCheck(n, row.id, f"its prev_hash does not match the hash of "
                                             f"{after}: a row before it was deleted, inserted "
                                             "or changed")
            if row_hash(expected, row.action, row.actor, row.target, row.details,
                        aware_or_now(row.at)) != row.hash:
                return ChainCheck(n, row.id, "its action, actor, target, details or time no "
                                             "longer match its hash: the row was changed")
            expected, previous_id = row.hash, row.id
        if head.head != expected or head.rows != n:
            return ChainCheck(n, None, f"the chain ends at row {previous_id} with {n} rows, but "
                                       f"its head records {head.rows}: rows at the end were "
                                       "deleted, or the head was changed")
        return ChainCheck(n)


def _rows(s: Session) -> Iterator[_Audit]:
    last = 0
    while True:  # in pages: a long log never sits in memory whole
        page = s.scalars(select(_Audit).where(_Audit.id > last).order_by(_Audit.id)
                         .limit(1000)).all()
        if not page:
            return
        yield from page
        last = page[-1].id
        s.expunge_all()


def _entry(a: _Audit) -> AuditEntry:
    return AuditEntry(action=a.action, actor=a.actor, target=a.target, details=a.details,
                      at=aware_or_now(a.at), id=a.id, prev_hash=a.prev_hash, hash=a.hash)
