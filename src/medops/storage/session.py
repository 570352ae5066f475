"""Transactions shared by the state store and the tables kept in their own modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import MetaData
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from medops.errors import StoreError


def table_sessions(engine: Engine, metadata: MetaData, what: str) -> sessionmaker[Session]:
    """Sessions on ``engine`` once the tables of ``metadata`` exist (created if missing)."""
    try:
        metadata.create_all(engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot create the {what} table: {exc}") from exc
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session], what: str,
                integrity_passes: bool = True) -> Iterator[Session]:
    """One transaction. Database errors become a StoreError naming ``what``; an IntegrityError
    passes through unchanged when ``integrity_passes``, for callers that read a duplicate key
    as an answer (an event already stored, an instance already received)."""
    with sessions.begin() as session:
        try:
            yield session
        except SQLAlchemyError as exc:
            if integrity_passes and isinstance(exc, IntegrityError):
                raise
            raise StoreError(f"state store error ({what}): {exc}") from exc
