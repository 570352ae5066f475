"""One engine per state database, and transactions that outlive a database restart.

SQLite by default (a file in the project), PostgreSQL for a team: the URL chooses. Every store
of :mod:`medops.storage` runs its transactions through :meth:`Database.run`:

* a transaction that loses its connection (PostgreSQL restarted or failed over, its backend
  terminated, the network cut) is run again **from the start** on a fresh connection, with
  backoff, for up to :attr:`RetryPolicy.seconds`; only then does it fail, with a
  :class:`~medops.errors.StoreError` that says what to do. ``pool_pre_ping`` replaces pooled
  connections that died while idle before a transaction even starts.
* anything else (a constraint, a bad query, a locked SQLite file after its 30 s timeout) fails
  at once: retrying cannot fix it.

A COMMIT cut off in flight may have been applied; the stores' writes are safe to repeat
(conditional updates, unique keys, compare-and-set), so running one twice changes nothing.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import DateTime, Table, create_engine, event, func, inspect, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from medops.errors import DependencyMissingError, StoreError
from medops.storage.base import aware_or_now, utcnow

log = logging.getLogger("medops.storage")

P = ParamSpec("P")
T = TypeVar("T")

# PostgreSQL SQLSTATEs that mean "this connection is gone, another may work": class 08
# (connection exception), and the server shutting down or starting up (57P01-57P03).
_RECONNECTABLE = ("57P01", "57P02", "57P03")


@dataclass(frozen=True)
class RetryPolicy:
    """How long a transaction keeps trying after losing its connection."""

    seconds: float = 30.0  # a PostgreSQL restart or a managed failover takes 5-30 s
    first_delay: float = 0.25
    max_delay: float = 4.0


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers (`medops runs ls`) work while a run writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # A host that drops packets would otherwise hang a connect for the TCP timeout (minutes).
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except ModuleNotFoundError as exc:
        raise DependencyMissingError(exc.name or "psycopg", "postgres", "PostgreSQL") from exc


def is_disconnect(exc: DBAPIError, refused: bool = True) -> bool:
    """True if ``exc`` says the connection was lost or cannot be made now (worth a retry);
    with ``refused`` False, a connection refused outright (no server there, perhaps never)
    is not counted."""
    if exc.connection_invalidated:
        return True
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(code, str) and (code.startswith("08") or code in _RECONNECTABLE):
        return True
    # No statement: the error came from opening the connection (refused, reset, timed out).
    return refused and isinstance(exc, OperationalError) and not exc.statement


class Database:
    """The engine and sessions of one state database, and the retry around transactions."""

    def __init__(self, url: str, retry: RetryPolicy | None = None) -> None:
        self.url = url
        self.retry = retry or RetryPolicy()
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._ready: set[str] = set()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def shown_url(self) -> str:
        """The URL without its password, for messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def ensure(self, tables: Iterable[Table]) -> None:
        """Create ``tables`` where missing and add the columns a newer medops declares to
        tables an older one made. A connection refused fails at once (a wrong URL is far
        more common at start-up than a restart); one lost half-way is retried."""
        todo = [t for t in tables if t.name not in self._ready]
        if not todo:
            return
        deadline = time.monotonic() + self.retry.seconds
        while True:
            try:
                # tables of other modules (users, received instances) have metadata of their own
                for metadata in {t.metadata for t in todo}:
                    metadata.create_all(self.engine,
                                        tables=[t for t in todo if t.metadata is metadata])
                add_missing_columns(self.engine, todo)
                break
            except DBAPIError as exc:
                if is_disconnect(exc, refused=False) and time.monotonic() < deadline:
                    log.warning("state store connection lost while opening it (%s); retrying",
                                type(exc.orig).__name__)
                    time.sleep(self.retry.first_delay)
                    continue
                if isinstance(exc, OperationalError):
                    raise StoreError(f"cannot open the state store {self.shown_url}: "
                                     f"{exc.orig}; check storage.state in medops.yaml") from exc
                raise StoreError(f"cannot create the tables of the state store "
                                 f"{self.shown_url}: {exc}") from exc
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot create the tables of the state store "
                                 f"{self.shown_url}: {exc}") from exc
        self._ready.update(t.name for t in todo)

    def run(self, work: Callable[[Session], T], what: str, integrity_passes: bool = True) -> T:
        """``work`` in one transaction, run again on a fresh connection if the connection is
        lost. An IntegrityError passes through when ``integrity_passes`` (callers that read a
        duplicate key as an answer); other database errors become a StoreError naming
        ``what``."""
        policy = self.retry
        deadline = time.monotonic() + policy.seconds
        delay, attempt = policy.first_delay, 0
        while True:
            attempt += 1
            try:
                with self.sessions.begin() as session:
                    return work(session)
            except IntegrityError as exc:
                if integrity_passes:
                    raise
                raise StoreError(f"state store error ({what}): {exc}") from exc
            except DBAPIError as exc:
                if not is_disconnect(exc):
                    raise StoreError(f"state store error ({what}): {exc}") from exc
                if time.monotonic() + delay > deadline:
                    raise StoreError(
                        f"lost the connection to the state store {self.shown_url} ({what}) and "
                        f"could not get it back in {policy.seconds:g}s ({attempt} attempts; "
                        f"last: {_first_line(exc.orig)}); check that the database is up and "
                        "reachable, then try again (an interrupted run continues with "
                        "`medops runs resume RUN_ID`, or by itself under the agent)") from exc
                log.warning("state store connection lost (%s, %s); retrying in %.2fs "
                            "(attempt %d)", what, type(exc.orig).__name__, delay, attempt)
                time.sleep(delay)
                delay = min(delay * 2, policy.max_delay)
            except SQLAlchemyError as exc:
                raise StoreError(f"state store error ({what}): {exc}") from exc

    def now(self, session: Session) -> datetime:
        """The database's clock (PostgreSQL), so hosts with skewed clocks agree on liveness
        and leases; SQLite lives on one machine, whose clock it is."""
        if self.dialect == "postgresql":
            value = session.scalar(select(func.clock_timestamp(type_=DateTime(timezone=True))))
            return aware_or_now(value)
        return utcnow()


class HasDatabase(Protocol):
    @property
    def db(self) -> Database: ...


S = TypeVar("S", bound=HasDatabase)


def transactional(what: str, integrity_passes: bool = True) -> Callable[
        [Callable[Concatenate[S, Session, P], T]], Callable[Concatenate[S, P], T]]:
    """A store method that takes its session second, run by :meth:`Database.run`:
    ``def get(self, s: Session, key: str)`` is called as ``store.get(key)``."""

    def wrap(method: Callable[Concatenate[S, Session, P], T]) -> Callable[Concatenate[S, P], T]:
        @functools.wraps(method)
        def call(self: S, *args: P.args, **kwargs: P.kwargs) -> T:
            return self.db.run(lambda s: method(self, s, *args, **kwargs), what,
                               integrity_passes)

        return call

    return wrap


def add_missing_columns(engine: Engine, tables: Iterable[Table]) -> list[str]:
    """``ALTER TABLE ... ADD COLUMN`` for each declared column an existing table lacks (a
    database made by an older medops); idempotent and safe when two processes open at once.
    New columns must be nullable: old rows have no value. Returns "table.column" added."""
    existing = [t for t in tables if inspect(engine).has_table(t.name)]
    if not existing:
        return []
    have = inspect(engine).get_multi_columns(filter_names=[t.name for t in existing])
    added: list[str] = []
    for table in existing:
        names = {c["name"] for c in have.get((None, table.name), [])}
        for column in table.columns:
            if column.name in names:
                continue
            if not column.nullable:
                raise StoreError(f"cannot add the column {table.name}.{column.name} to an "
                                 "existing database: it is not nullable")
            kind = column.type.compile(engine.dialect)
            prep = engine.dialect.identifier_preparer
            guard = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
            ddl = (f"ALTER TABLE {prep.format_table(table)} ADD COLUMN{guard} "
                   f"{prep.format_column(column)} {kind}")
            try:
                with engine.begin() as conn:
                    conn.execute(text(ddl))
            except OperationalError as exc:  # SQLite: another process added it first
                if "duplicate column" not in str(exc.orig).lower():
                    raise
            added.append(f"{table.name}.{column.name}")
            log.info("state store: added the column %s.%s", table.name, column.name)
    return added


def _first_line(exc: object) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
