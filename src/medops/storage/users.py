"""Who may use `medops server`: ``server_users``, ``server_tokens`` and ``server_sessions``.

In the state database (same engine as :class:`~medops.storage.StateStore`), in its own module
like :mod:`medops.storage.received`. Only hashes are stored: a user's password as an argon2
hash (made by :mod:`medops.server.auth`, which owns the hashing), a machine token and a login
session as the SHA-256 of their random value, so a copy of the database lets no one in.
The ``server_`` prefix keeps these tables apart from MLflow's basic-auth ``users`` table when
both live in one PostgreSQL database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, String, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from medops.errors import ConfigError, NotFoundError
from medops.storage.engine import Database, transactional


@dataclass(frozen=True)
class UserRecord:
    name: str
    role: str  # a medops.server.auth.Role value
    password_hash: str  # argon2; never shown
    disabled: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TokenRecord:
    """A machine token (agent, serve, CI); its value was shown once, at creation."""

    name: str
    role: str
    created_by: str
    created_at: datetime
    revoked_at: datetime | None = None
    id: int | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class _Base(DeclarativeBase):
    pass


class _User(_Base):
    __tablename__ = "server_users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class _Token(_Base):
    __tablename__ = "server_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # unique among active tokens only (checked on insert): a revoked name may be used again
    name: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class _Session(_Base):
    __tablename__ = "server_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user: Mapped[str] = mapped_column(ForeignKey("server_users.name", ondelete="CASCADE"),
                                      index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


class UserStore:
    """Users, machine tokens and login sessions in the state database ``db``; every call is
    one transaction, retried on a lost connection like the state store's."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(_Base.metadata.sorted_tables)

    # -- users ----------------------------------------------------------------------------
    def add_user(self, name: str, role: str, password_hash: str) -> UserRecord:
        try:
            return self._add_user(name, role, password_hash)
        except IntegrityError:
            raise ConfigError(f"user {name!r} exists already; change it with `medops server "
                              "users set-role` or pick another name") from None

    @transactional("add a user")
    def _add_user(self, s: Session, name: str, role: str, password_hash: str) -> UserRecord:
        now = _utcnow()
        row = _User(name=name, role=role, password_hash=password_hash, disabled=False,
                    created_at=now, updated_at=now)
        s.add(row)
        s.flush()
        return _user(row)

    @transactional("read a user")
    def user(self, s: Session, name: str) -> UserRecord | None:
        row = s.get(_User, name)
        return None if row is None else _user(row)

    @transactional("list users")
    def users(self, s: Session) -> list[UserRecord]:
        return [_user(r) for r in s.scalars(select(_User).order_by(_User.name))]

    @transactional("count users")
    def count_users(self, s: Session) -> int:
        return int(s.scalar(select(func.count()).select_from(_User)) or 0)

    @transactional("change a user")
    def update_user(self, s: Session, name: str, **fields: Any) -> UserRecord:
        """Change ``role``, ``password_hash`` or ``disabled``; a disabled user or a new
        password ends the user's sessions."""
        row = s.get(_User, name)
        if row is None:
            raise NotFoundError(f"no user {name!r}; `medops server users ls` lists them")
        for key, value in fields.items():
            setattr(row, key, value)
        row.updated_at = _utcnow()
        if fields.get("disabled") or "password_hash" in fields:
            s.execute(delete(_Session).where(_Session.user == name))
        return _user(row)

    # -- machine tokens -------------------------------------------------------------------
    @transactional("add a token")
    def add_token(self, s: Session, name: str, role: str, token_hash: str,
                  created_by: str) -> TokenRecord:
        taken = s.scalar(select(_Token.id).where(_Token.name == name,
                                                 _Token.revoked_at.is_(None)))
        if taken is not None:
            raise ConfigError(f"an active token named {name!r} exists already; revoke it "
                              f"first (`medops server tokens revoke {name}`) or pick "
                              "another name")
        row = _Token(name=name, role=role, token_hash=token_hash, created_by=created_by,
                     created_at=_utcnow(), revoked_at=None)
        s.add(row)
        s.flush()
        return _token(row)

    @transactional("check a token")
    def token_by_hash(self, s: Session, token_hash: str) -> TokenRecord | None:
        """The active token with this hash, or None."""
        row = s.scalar(select(_Token).where(_Token.token_hash == token_hash,
                                            _Token.revoked_at.is_(None)))
        return None if row is None else _token(row)

    @transactional("list tokens")
    def tokens(self, s: Session, include_revoked: bool = False) -> list[TokenRecord]:
        q = select(_Token).order_by(_Token.id)
        if not include_revoked:
            q = q.where(_Token.revoked_at.is_(None))
        return [_token(r) for r in s.scalars(q)]

    @transactional("revoke a token")
    def revoke_token(self, s: Session, name: str) -> TokenRecord:
        row = s.scalar(select(_Token).where(_Token.name == name, _Token.revoked_at.is_(None)))
        if row is None:
            raise NotFoundError(f"no active token named {name!r}; `medops server tokens "
                                "ls` lists them")
        row.revoked_at = _utcnow()
        return _token(row)

    # -- login sessions -------------------------------------------------------------------
    @transactional("add a login session")
    def add_session(self, s: Session, token_hash: str, user: str,
                    expires_at: datetime) -> None:
        now = _utcnow()
        # expired sessions go as new ones come, so the table stays small
        s.execute(delete(_Session).where(_Session.expires_at < now))
        s.add(_Session(token_hash=token_hash, user=user, created_at=now,
                       expires_at=expires_at))

    @transactional("check a login session")
    def session_user(self, s: Session, token_hash: str) -> UserRecord | None:
        """The enabled user of an unexpired session with this hash, or None."""
        row = s.execute(select(_User, _Session.expires_at)
                        .join(_Session, _Session.user == _User.name)
                        .where(_Session.token_hash == token_hash)).first()
        if row is None:
            return None
        user, expires_at = row
        if user.disabled or _aware(expires_at) <= _utcnow():
            return None
        return _user(user)

    @transactional("end a login session")
    def delete_session(self, s: Session, token_hash: str) -> None:
        s.execute(delete(_Session).where(_Session.token_hash == token_hash))


def _user(r: _User) -> UserRecord:
    return UserRecord(name=r.name, role=r.role, password_hash=r.password_hash,
                      disabled=bool(r.disabled), created_at=_aware(r.created_at),
                      updated_at=_aware(r.updated_at))


def _token(r: _Token) -> TokenRecord:
    return TokenRecord(name=r.name, role=r.role, created_by=r.created_by,
                       created_at=_aware(r.created_at),
                       revoked_at=None if r.revoked_at is None else _aware(r.revoked_at),
                       id=r.id)
