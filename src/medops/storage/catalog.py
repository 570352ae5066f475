"""The catalog: the items (images, frames) known to the project, the split each group was
given once and for all, and where each polled source stopped (cursors)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Integer, String, Text, UniqueConstraint, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from medops.storage.base import Base, aware_or_now, tables, utcnow
from medops.storage.engine import Database, transactional
from medops.storage.records import Item, ItemStatus, Split


class _Item(Base):
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


class _SplitGroup(Base):
    """The split each group (patient, study or item) was given, once and for all."""

    __tablename__ = "split_groups"
    group_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    split: Mapped[str] = mapped_column(String(8))
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Cursor(Base):
    """Where each polled source stopped: stored only once what it covers is ingested."""

    __tablename__ = "cursors"
    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


TABLES = tables(_Item, _SplitGroup, _Cursor)


class CatalogStore:
    """Items, split groups and source cursors on ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(TABLES)

    # -- items ----------------------------------------------------------------------------
    def upsert_items(self, items: Iterable[Item]) -> tuple[int, int]:
        """Add new items, refresh changed ones (same URI, new content). Returns (new, changed)."""
        return self._upsert(list(items))  # a list: a retried transaction reads it again

    @transactional("upsert items")
    def _upsert(self, s: Session, items: list[Item]) -> tuple[int, int]:
        new = changed = 0
        for item in items:
            row = s.scalars(select(_Item).where(
                _Item.uri == item.uri,
                _Item.frame.is_(None) if item.frame is None else _Item.frame == item.frame,
            )).first()
            if row is None:
                s.add(_item_row(item))
                new += 1
            elif row.content_hash != item.content_hash or row.label != item.label:
                for key, value in _item_row(item).__dict__.items():
                    if not key.startswith("_") and key not in ("id", "created_at"):
                        setattr(row, key, value)
                changed += 1
        return new, changed

    @transactional("list items")
    def items(self, s: Session, status: ItemStatus | None = None,
              source: str | None = None) -> list[Item]:
        q = select(_Item).order_by(_Item.id)
        if status is not None:
            q = q.where(_Item.status == status.value)
        if source is not None:
            q = q.where(_Item.source == source)
        return [_item(r) for r in s.scalars(q)]

    def update_items(self, updates: Iterable[tuple[int, dict[str, Any]]]) -> None:
        self._update(list(updates))

    @transactional("update items")
    def _update(self, s: Session, updates: list[tuple[int, dict[str, Any]]]) -> None:
        for item_id, fields in updates:
            values = {k: (v.value if isinstance(v, (ItemStatus, Split)) else v)
                      for k, v in fields.items()}
            s.execute(update(_Item).where(_Item.id == item_id).values(**values))

    @transactional("count items")
    def item_counts(self, s: Session) -> dict[str, dict[str, int]]:
        """{source: {status: count}}."""
        rows = s.execute(select(_Item.source, _Item.status, func.count())
                         .group_by(_Item.source, _Item.status)).all()
        out: dict[str, dict[str, int]] = {}
        for source, status, count in rows:
            out.setdefault(source, {})[status] = count
        return out

    # -- split groups ---------------------------------------------------------------------
    @transactional("read split groups")
    def split_groups(self, s: Session) -> dict[str, Split]:
        return {g.group_key: Split(g.split) for g in s.scalars(select(_SplitGroup))}

    @transactional("assign split groups")
    def assign_split_groups(self, s: Session, assignments: dict[str, Split]) -> None:
        """Record new groups' splits; a group that already has one keeps it."""
        known = set(s.scalars(select(_SplitGroup.group_key)))
        now = utcnow()
        for key, split in assignments.items():
            if key not in known:
                s.add(_SplitGroup(group_key=key, split=split.value, assigned_at=now))

    # -- source cursors -------------------------------------------------------------------
    @transactional("read cursor")
    def get_cursor(self, s: Session, source: str) -> str | None:
        row = s.get(_Cursor, source)
        return row.cursor if row else None

    @transactional("store cursor")
    def set_cursor(self, s: Session, source: str, cursor: str) -> None:
        row = s.get(_Cursor, source)
        if row is None:
            s.add(_Cursor(source=source, cursor=cursor, updated_at=utcnow()))
        else:
            row.cursor, row.updated_at = cursor, utcnow()

    @transactional("list cursors")
    def cursors(self, s: Session) -> dict[str, tuple[str, datetime]]:
        """{source: (cursor, updated_at)}."""
        return {r.source: (r.cursor, aware_or_now(r.updated_at))
                for r in s.scalars(select(_Cursor).order_by(_Cursor.source))}


def _item_row(item: Item) -> _Item:
    return _Item(uri=item.uri, frame=item.frame, content_hash=item.content_hash,
                 source=item.source, label=item.label, patient_id=item.patient_id,
                 study_uid=item.study_uid, series_uid=item.series_uid,
                 status=item.status.value, reason=item.reason,
                 split=item.split.value if item.split else None, info=item.info,
                 created_at=utcnow())


def _item(r: _Item) -> Item:
    return Item(uri=r.uri, content_hash=r.content_hash, source=r.source, frame=r.frame,
                label=r.label, patient_id=r.patient_id, study_uid=r.study_uid,
                series_uid=r.series_uid, status=ItemStatus(r.status), reason=r.reason,
                split=Split(r.split) if r.split else None, info=r.info or {}, id=r.id)
