"""The declarative base every table of the state database shares, and UTC helpers.

One metadata for the stores of :mod:`medops.storage` (runs, catalog, events, audit,
deployments, leases), so foreign keys between them resolve and one ``create_all`` makes them
all. The ORM rows stay inside the store modules; callers get :mod:`medops.storage.records`.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Table
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


def tables(*models: type[Base]) -> tuple[Table, ...]:
    """The tables of ``models``, for :meth:`~medops.storage.engine.Database.ensure`."""
    return tuple(Base.metadata.tables[m.__tablename__] for m in models)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(dt: datetime | None) -> datetime | None:
    """``dt`` in UTC: SQLite drops the timezone, and every timestamp medops writes is UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def aware_or_now(dt: datetime | None) -> datetime:
    return aware(dt) or utcnow()
