"""Leases: one holder at a time for a named duty (the agent of a project), on any machine.

A lease has a holder and an expiry on the database's clock. Its holder renews it well before
it expires; anyone may take it once it has expired, or at once when its holder lived on this
node and its process is gone (see :mod:`medops.storage.liveness`). Work that must only happen
under the lease checks it in its own transaction (:func:`still_held`), so a holder that was
paused past its expiry and lost the lease cannot act on stale belief.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import DateTime, String, delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from medops.storage.base import Base, aware_or_now, tables
from medops.storage.engine import Database, transactional
from medops.storage.liveness import Owner


class _Lease(Base):
    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


TABLES = tables(_Lease)


@dataclass(frozen=True)
class LeaseState:
    name: str
    held: bool  # by the asking holder, now
    holder: str | None  # who holds it (None: nobody)
    expires_at: datetime | None


class LeaseStore:
    """Named leases on ``db``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(TABLES)

    def acquire(self, name: str, holder: str, seconds: float) -> LeaseState:
        """Take ``name`` for ``holder`` for ``seconds`` if it is free, expired, already
        ``holder``'s, or held by a process of this node that is gone."""
        try:
            state = self._acquire(name, holder, seconds, None)
        except IntegrityError:  # another inserted the first row at the same time: ask again
            state = self._acquire(name, holder, seconds, None)
        if not state.held and state.holder and Owner.parse(state.holder).dead_here():
            state = self._acquire(name, holder, seconds, state.holder)
        return state

    @transactional("acquire lease")
    def _acquire(self, s: Session, name: str, holder: str, seconds: float,
                 dead: str | None) -> LeaseState:
        now = self.db.now(s)
        until = now + timedelta(seconds=seconds)
        takable = (_Lease.holder == holder) | (_Lease.expires_at < now)
        if dead is not None:
            takable = takable | (_Lease.holder == dead)
        taken = s.execute(update(_Lease).where(_Lease.name == name, takable)
                          .values(holder=holder, acquired_at=now, expires_at=until))
        if getattr(taken, "rowcount", 0) == 1:
            return LeaseState(name, True, holder, until)
        row = s.get(_Lease, name)
        if row is None:
            s.add(_Lease(name=name, holder=holder, acquired_at=now, expires_at=until))
            s.flush()
            return LeaseState(name, True, holder, until)
        return LeaseState(name, False, row.holder, aware_or_now(row.expires_at))

    @transactional("renew lease")
    def renew(self, s: Session, name: str, holder: str, seconds: float) -> bool:
        """Extend ``holder``'s lease; False if another holds it now. An expired lease nobody
        took is still ``holder``'s: nobody acted in between."""
        until = self.db.now(s) + timedelta(seconds=seconds)
        result = s.execute(update(_Lease).where(_Lease.name == name, _Lease.holder == holder)
                           .values(expires_at=until))
        return bool(getattr(result, "rowcount", 0) == 1)

    @transactional("release lease")
    def release(self, s: Session, name: str, holder: str) -> None:
        """Give ``name`` up (a clean stop: a standby takes over at once)."""
        s.execute(delete(_Lease).where(_Lease.name == name, _Lease.holder == holder))

    @transactional("read lease")
    def state(self, s: Session, name: str, holder: str) -> LeaseState:
        row = s.get(_Lease, name)
        if row is None:
            return LeaseState(name, False, None, None)
        return LeaseState(name, row.holder == holder, row.holder, aware_or_now(row.expires_at))


def still_held(s: Session, name: str, holder: str) -> bool:
    """In the caller's transaction: True if ``holder`` holds ``name``, which then stays so
    until that transaction ends (the row is locked: a standby cannot take it in between)."""
    result = s.execute(update(_Lease).where(_Lease.name == name, _Lease.holder == holder)
                       .values(holder=holder))
    return bool(getattr(result, "rowcount", 0) == 1)
