"""Who is calling `medops server`: users with roles, machine tokens, login sessions.

Two kinds of callers, both checked against the state database (:mod:`medops.storage.users`):

* a **user** logs in with a name and a password (argon2id through ``argon2.PasswordHasher``;
  only the hash is stored) and gets a **session** token, valid :data:`SESSION_HOURS`, sent back
  as ``Authorization: Bearer ...`` or as the ``medops_session`` cookie;
* a **machine token** (an agent, a serving host, CI) is made by an admin, shown once, and
  stored as its SHA-256; it works until revoked.

Session tokens start with ``mds_`` and machine tokens with ``mdt_``, so a leaked one is
recognisable (secret scanners) and a lookup goes to one table. A checked token is remembered
for :data:`REMEMBER_SECONDS`, so a busy dashboard does not ask the database on every request.
Roles are ordered: each role may do what the ones below it may.

===========  ===================================================================
viewer       read everything the API and the dashboard show
trainer      also ask the agent for a run
approver     also approve, reject and roll back model versions
admin        also manage users and machine tokens
===========  ===================================================================
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from medops.config.enums import StrEnum
from medops.errors import (
    AuthenticationError,
    ConfigError,
    DependencyMissingError,
    NotFoundError,
    PermissionDeniedError,
)
from medops.storage.engine import Database
from medops.storage.users import TokenRecord, UserRecord, UserStore

#: How long a login session lasts (a working day); log in again after it.
SESSION_HOURS = 12.0
#: The cookie a browser login sets (HttpOnly, SameSite=Strict, Secure behind TLS).
SESSION_COOKIE = "medops_session"
#: Shorter passwords are refused: argon2 slows guessing, it cannot make a short password long.
MIN_PASSWORD_LENGTH = 12
#: How long a checked token is believed without asking the database again. A revocation, a
#: disabled user or a new role made through this process applies at once; one made elsewhere
#: (the CLI on the host, another worker) within this time.
REMEMBER_SECONDS = 1.0
SESSION_PREFIX = "mds_"
TOKEN_PREFIX = "mdt_"
#: Names of users and tokens: no ':' (a token's principal is ``token:NAME``), no spaces.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}"

#: An audit hook: (action, actor, target, details), e.g. ``project.state.audit``.
AuditHook = Callable[[str, str, str, dict[str, Any]], None]


class Role(StrEnum):
    """What a principal may do; ordered ``viewer < trainer < approver < admin``."""

    VIEWER = "viewer"
    TRAINER = "trainer"
    APPROVER = "approver"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANKS[self.value]

    @classmethod
    def parse(cls, value: str) -> Role:
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"no role {value!r}; the roles are "
                              f"{', '.join(r.value for r in cls)}") from None

    # str's own comparison would order the names alphabetically
    def __lt__(self, other: object) -> bool:
        return self.rank < _rank(other)

    def __le__(self, other: object) -> bool:
        return self.rank <= _rank(other)

    def __gt__(self, other: object) -> bool:
        return self.rank > _rank(other)

    def __ge__(self, other: object) -> bool:
        return self.rank >= _rank(other)


_RANKS = {"viewer": 0, "trainer": 1, "approver": 2, "admin": 3}


def _rank(other: object) -> int:
    if isinstance(other, Role):
        return other.rank
    raise TypeError(f"cannot order a Role against {type(other).__name__}")


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``name`` is what the audit log records: the user's name, or
    ``token:NAME`` for a machine token."""

    name: str
    role: Role
    kind: Literal["user", "token"]

    def can(self, role: Role) -> bool:
        return self.role >= role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str, what: str = "user") -> str:
    if not re.fullmatch(NAME_PATTERN, name or ""):
        raise ConfigError(f"{what} name {name!r} is not valid: use letters, digits and . _ @ -, "
                          "starting with a letter or digit, at most 64 characters")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(f"the password has {len(password)} characters; at least "
                          f"{MIN_PASSWORD_LENGTH} are required (a passphrase of a few words works)")
    return password


class Authenticator:
    """Users, machine tokens and sessions in the state database."""

    def __init__(self, db: Database, *, session_hours: float = SESSION_HOURS,
                 audit: AuditHook | None = None) -> None:
        try:
            from argon2 import PasswordHasher
        except ModuleNotFoundError as exc:
            raise DependencyMissingError("argon2-cffi", "server", "the team server") from exc
        self.store = UserStore(db)
        self.session_hours = session_hours
        self._hasher = PasswordHasher()
        self._audit = audit
        self._dummy: str | None = None
        self._seen: dict[str, tuple[float, Principal | None]] = {}
        self._seen_lock = threading.Lock()

    # -- logging in -----------------------------------------------------------------------
    def authenticate_password(self, user: str, password: str) -> Principal:
        """The user ``user`` if ``password`` is theirs; AuthenticationError otherwise (the
        same message whether the name or the password was wrong)."""
        from argon2.exceptions import InvalidHashError, VerificationError

        record = self.store.user(user) if re.fullmatch(NAME_PATTERN, user or "") else None
        try:
            self._hasher.verify(record.password_hash if record else self._dummy_hash(),
                                password or "")
            ok = record is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or record is None:
            raise AuthenticationError("wrong user name or password")
        if record.disabled:
            raise AuthenticationError(f"user {record.name!r} is disabled; an admin can enable "
                                      "it again")
        if self._hasher.check_needs_rehash(record.password_hash):
            self.store.update_user(record.name, password_hash=self._hasher.hash(password))
        return Principal(record.name, Role.parse(record.role), "user")

    def _dummy_hash(self) -> str:
        """A hash to verify against when the user does not exist, so that a wrong name costs
        the same time as a wrong password and names cannot be probed by timing."""
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    def create_session(self, principal: Principal) -> str:
        """A new session token for a logged-in user (stored as its hash, expiring)."""
        if principal.kind != "user":
            raise AuthenticationError("only a user logs in; a machine token is used as it is")
        token = SESSION_PREFIX + secrets.token_urlsafe(32)
        expires = datetime.now(timezone.utc) + timedelta(hours=self.session_hours)
        self.store.add_session(hash_token(token), principal.name, expires)
        return token

    def principal_for(self, token: str | None) -> Principal | None:
        """Who holds ``token`` (a session of an enabled user, or an active machine token)."""
        if not token:
            return None
        known, principal = self.remembered(token)
        return principal if known else self.look_up(token)

    def remembered(self, token: str) -> tuple[bool, Principal | None]:
        """(True, who) when ``token`` was checked less than :data:`REMEMBER_SECONDS` ago."""
        key = hash_token(token)
        with self._seen_lock:
            hit = self._seen.get(key)
        if hit is None or time.monotonic() - hit[0] >= REMEMBER_SECONDS:
            return False, None
        return True, hit[1]

    def look_up(self, token: str) -> Principal | None:
        """Who holds ``token``, asked of the database (and remembered for a moment)."""
        key = hash_token(token)
        principal: Principal | None = None
        if token.startswith(SESSION_PREFIX):
            user = self.store.session_user(key)
            if user is not None:
                principal = Principal(user.name, Role.parse(user.role), "user")
        elif token.startswith(TOKEN_PREFIX):
            found = self.store.token_by_hash(key)
            if found is not None:
                principal = Principal(f"token:{found.name}", Role.parse(found.role), "token")
        with self._seen_lock:
            if len(self._seen) >= 10_000:  # a flood of made-up tokens: start over
                self._seen.clear()
            self._seen[key] = (time.monotonic(), principal)
        return principal

    def _forget(self) -> None:
        """A credential changed here: check every token again at its next use."""
        with self._seen_lock:
            self._seen.clear()

    def logout(self, token: str) -> None:
        if token.startswith(SESSION_PREFIX):
            self.store.delete_session(hash_token(token))
            self._forget()

    # -- users ----------------------------------------------------------------------------
    def add_user(self, name: str, role: Role, password: str, by: str) -> UserRecord:
        check_name(name)
        record = self.store.add_user(name, Role.parse(role).value,
                                     self._hasher.hash(check_password(password)))
        self._log("server.user_added", by, name, {"role": record.role})
        return record

    def set_role(self, name: str, role: Role, by: str) -> UserRecord:
        role = Role.parse(role)
        if role is not Role.ADMIN:
            self._keep_an_admin(name, "take the role admin from")
        record = self.store.update_user(name, role=role.value)
        self._forget()
        self._log("server.user_role_set", by, name, {"role": record.role})
        return record

    def set_disabled(self, name: str, disabled: bool, by: str) -> UserRecord:
        if disabled:
            self._keep_an_admin(name, "disable")
        record = self.store.update_user(name, disabled=disabled)
        self._forget()
        self._log("server.user_disabled" if disabled else "server.user_enabled", by, name, {})
        return record

    def set_password(self, name: str, password: str, by: str) -> UserRecord:
        record = self.store.update_user(
            name, password_hash=self._hasher.hash(check_password(password)))
        self._forget()
        self._log("server.password_set", by, name, {})
        return record

    def users(self) -> list[UserRecord]:
        return self.store.users()

    def _keep_an_admin(self, name: str, what: str) -> None:
        """Refuse to leave the server without an enabled admin (no one could manage it)."""
        admins = [u.name for u in self.store.users()
                  if u.role == Role.ADMIN.value and not u.disabled]
        if admins == [name]:
            raise ConfigError(f"{name!r} is the only enabled admin; make another user admin "
                              f"before you {what} {name!r}")

    def ensure_first_admin(self, password: str | None, name: str = "admin") -> UserRecord | None:
        """With no user at all and ``password`` given (``MEDOPS_ADMIN_PASSWORD``), make the
        first admin; None when users exist or no password was given."""
        if not password or self.store.count_users():
            return None
        try:
            check_password(password)
        except ConfigError as exc:
            raise ConfigError(f"MEDOPS_ADMIN_PASSWORD: {exc}") from None
        try:
            return self.add_user(name, Role.ADMIN, password, by="medops server (first start)")
        except ConfigError:
            if self.store.count_users():  # another worker of the same start made it first
                return None
            raise

    # -- machine tokens -------------------------------------------------------------------
    def create_token(self, name: str, role: Role, by: str) -> tuple[str, TokenRecord]:
        """A new machine token: its value (shown once, never stored) and its record."""
        check_name(name, "token")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = self.store.add_token(name, Role.parse(role).value, hash_token(token), by)
        self._log("server.token_created", by, f"token:{name}", {"role": record.role})
        return token, record

    def revoke_token(self, name: str, by: str) -> TokenRecord:
        record = self.store.revoke_token(name)
        self._forget()
        self._log("server.token_revoked", by, f"token:{name}", {})
        return record

    def tokens(self, include_revoked: bool = False) -> list[TokenRecord]:
        return self.store.tokens(include_revoked)

    def _log(self, action: str, actor: str, target: str, details: dict[str, Any]) -> None:
        if self._audit is not None:
            self._audit(action, actor, target, details)


# -- FastAPI dependencies -----------------------------------------------------------------
def request_token(request: Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer ...``, else the session cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(SESSION_COOKIE) or None


def authenticator_of(request: Request) -> Authenticator:
    found = getattr(request.app.state, "authenticator", None)
    if not isinstance(found, Authenticator):  # an app not made by create_app
        raise NotFoundError("this application has no authenticator; build it with "
                            "medops.server.app.create_app")
    return found


def optional_principal(request: Request) -> Principal | None:
    """The caller, or None when the request carries no valid credentials."""
    return authenticator_of(request).principal_for(request_token(request))


def current_principal(request: Request) -> Principal:
    """The authenticated caller, or 401 saying what is missing (a FastAPI dependency, or a
    plain call from a page's handler)."""
    auth, token = _credentials(request)
    return _checked(request, token, auth.principal_for(token))


def require(role: Role) -> Callable[[Request], Coroutine[Any, Any, Principal]]:
    """FastAPI dependency: the caller, if their role is at least ``role``; else 403.

    A token checked in the last :data:`REMEMBER_SECONDS` is answered on the event loop;
    otherwise the database is asked from a worker thread, never blocking the loop."""

    async def dependency(request: Request) -> Principal:
        auth, token = _credentials(request)
        known, principal = auth.remembered(token)
        if not known:
            principal = await run_in_threadpool(auth.look_up, token)
        principal = _checked(request, token, principal)
        if not principal.can(role):
            raise PermissionDeniedError(
                f"{principal.name} is a {principal.role.value}; this needs the role "
                f"{role.value} or higher")
        return principal

    dependency.__name__ = f"require_{role.value}"
    return dependency


def _credentials(request: Request) -> tuple[Authenticator, str]:
    token = request_token(request)
    if token is None:
        raise AuthenticationError("not logged in: send `Authorization: Bearer TOKEN` (a "
                                  "machine token or the token of POST /api/login)")
    return authenticator_of(request), token


def _checked(request: Request, token: str, principal: Principal | None) -> Principal:
    if principal is None:
        raise AuthenticationError("invalid, expired or revoked token; log in again (POST "
                                  "/api/login) or ask an admin for a new machine token")
    request.state.principal = principal
    return principal
