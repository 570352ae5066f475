"""The state store when PostgreSQL drops its connections (a restart, a failover, an admin
terminating backends): transactions run again on fresh connections, with backoff, and fail
with a clear StoreError only when the database stays away."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, make_url

from medops.errors import StoreError
from medops.storage import StateStore
from medops.storage.engine import RetryPolicy
from tests.conftest import _postgres_database

pytestmark = pytest.mark.postgres

# The statement the issue names: every other connection to the database, gone.
TERMINATE_ALL = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _postgres_database()


@pytest.fixture
def admin(pg_url: str) -> Iterator[Connection]:
    """An autocommit connection to the same database, as a DBA's psql session (opened first:
    it stays while the database refuses new connections)."""
    engine = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn
    engine.dispose()


def _terminate_all(admin: Connection) -> int:
    return len(admin.execute(text(TERMINATE_ALL)).all())


def _allow_connections(pg_url: str, allowed: bool) -> None:
    name = make_url(pg_url).database
    server = create_engine(make_url(pg_url).set(database="postgres"),
                           isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allowed).lower()}'))
    server.dispose()


def test_connections_terminated_between_transactions_are_replaced(pg_url: str,
                                                                    admin: Connection) -> None:
    store = StateStore(pg_url)
    store.create_run("run-1", "manual", {}, ["ingest"])

    def busy(n: int) -> None:  # several pooled connections, all about to die
        store.set_cursor(f"source-{n}", "1")

    threads = [threading.Thread(target=busy, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _terminate_all(admin) >= 1
    store.update_step("run-1", "ingest", status="succeeded")
    assert store.get_run("run-1").steps[0].status.value == "succeeded"
    assert len(store.cursors()) == 4
    store.close()


def _cut_off_first(store: StateStore, admin: Connection, prefix: str) -> list[int]:
    """Terminate the backend running the first statement that starts with ``prefix``, just
    before it is sent: the transaction dies half-way, as in a server crash."""
    killed: list[int] = []

    @event.listens_for(store.engine, "before_cursor_execute")
    def cut(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(prefix) and not killed:
            pid = conn.connection.dbapi_connection.info.backend_pid
            admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
            killed.append(pid)

    return killed


def test_a_transaction_cut_off_half_way_runs_again_and_commits_once(
        pg_url: str, admin: Connection, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(pg_url)
    store.audit("model.approved", "alice", "m/1", {"note": "first"})
    killed = _cut_off_first(store, admin, "INSERT INTO audit_log")
    with caplog.at_level(logging.WARNING, logger="medops.storage"):
        store.audit("model.approved", "bob", "m/2", {"note": "second"})
    assert killed, "the audit insert was never cut off"
    assert "state store connection lost (audit" in caplog.text
    check = store.audit_trail.verify()
    assert check.intact and check.rows == 2  # the head moved once: no fork, no gap
    assert [a.actor for a in store.audit_log()] == ["bob", "alice"]

    # A run and the claims of its events: both, once.
    e = store.add_event("run.requested", {})
    assert e is not None and e.id is not None
    killed = _cut_off_first(store, admin, "INSERT INTO event_decisions")
    assert store.claim_events_for_run("r1", "run.requested#1", {}, ["ingest"],
                                      {e.id: ("started", "started run r1")})
    assert killed
    assert [r.id for r in store.list_runs()] == ["r1"]
    (opened,) = store.open_events()
    assert opened.decision is not None and opened.decision.run_id == "r1"
    store.close()


def test_a_database_back_within_the_retry_budget_is_waited_for(pg_url: str,
                                                               admin: Connection) -> None:
    store = StateStore(pg_url, RetryPolicy(seconds=30, first_delay=0.1, max_delay=0.5))
    store.set_cursor("pacs", "1")
    _allow_connections(pg_url, False)  # as a restarting server: no connection for a while
    back = threading.Timer(1.5, _allow_connections, (pg_url, True))
    try:
        _terminate_all(admin)
        back.start()
        t0 = time.monotonic()
        store.set_cursor("pacs", "2")
        waited = time.monotonic() - t0
    finally:
        back.join()
    assert waited >= 1.0
    assert store.get_cursor("pacs") == "2"
    store.close()


def test_a_database_that_stays_away_is_a_clear_error(pg_url: str, admin: Connection) -> None:
    store = StateStore(pg_url, RetryPolicy(seconds=1.5, first_delay=0.1, max_delay=0.5))
    store.set_cursor("pacs", "1")
    _allow_connections(pg_url, False)
    try:
        _terminate_all(admin)
        t0 = time.monotonic()
        with pytest.raises(StoreError) as caught:
            store.get_cursor("pacs")
        waited = time.monotonic() - t0
    finally:
        _allow_connections(pg_url, True)
    message = str(caught.value)
    assert "lost the connection to the state store" in message
    assert "check that the database is up and reachable" in message
    assert "medops runs resume" in message
    assert 1.0 <= waited < 15
    assert store.get_cursor("pacs") == "1"  # and it works again once the database is back
    store.close()


def test_a_run_finishes_while_its_connections_keep_being_terminated(
        pg_url: str, admin: Connection, tmp_path: Path) -> None:
    from medops.config import Step
    from medops.demo.synthetic import make_synthetic_dataset
    from medops.pipeline import PipelineRunner
    from medops.project import Project
    from tests.pipeline.conftest import FAST

    root = tmp_path / "proj"
    Project.init(root, name="restart")
    make_synthetic_dataset(root / "data" / "raw", n_patients=8, images_per_patient=2, size=32)
    project = Project.load(root, {**FAST, "storage.state": pg_url, "pipeline.heartbeat": 0.2})
    assert project.state.list_runs() == []  # opened (its tables made) before the trouble
    stop, terminated = threading.Event(), [0]

    def keep_terminating() -> None:  # the heartbeat, the steps' writes: all cut, again and again
        while not stop.wait(0.05):
            terminated[0] += _terminate_all(admin)

    chaos = threading.Thread(target=keep_terminating)
    chaos.start()
    try:
        run = PipelineRunner(project).run(until=Step.SPLIT)
    finally:
        stop.set()
        chaos.join()
    assert terminated[0] > 0
    assert run.status.value == "succeeded"
    assert [s.attempts for s in run.steps[:3]] == [1, 1, 1]  # no step was redone
    assert len(project.state.list_runs()) == 1
    assert [counts.get("ok") for counts in project.state.item_counts().values()] == [16]
    project.close()



def test_the_tables_of_other_modules_retry_too(pg_url: str, admin: Connection) -> None:
    """Logins, received DICOM instances and serving figures live in the same database: a
    write of theirs cut off half-way runs again and commits once, as the state store's do."""
    from datetime import datetime, timedelta, timezone

    from medops.storage.received import ReceivedIndex, ReceivedInstance
    from medops.storage.serving import ServingStats, ServingWindow
    from medops.storage.users import UserStore

    store = StateStore(pg_url)
    users, received, serving = UserStore(store.db), ReceivedIndex(store.db), ServingStats(store.db)
    now = datetime.now(timezone.utc)
    users.add_user("dr-lee", "approver", "argon2-hash")

    killed = _cut_off_first(store, admin, "INSERT INTO server_sessions")
    users.add_session("session-hash", "dr-lee", now + timedelta(hours=1))
    assert killed and users.session_user("session-hash") is not None

    killed = _cut_off_first(store, admin, "INSERT INTO received_instances")
    assert received.add(ReceivedInstance(source="scp", sop_hash="s1", series_hash="se",
                                         study_hash="st", path="x.dcm", size=1,
                                         calling_ae="PACS"))
    assert killed and received.counts("scp") == {"received": 1}

    killed = _cut_off_first(store, admin, "INSERT INTO serving_stats")
    serving.record(ServingWindow(model="m", version="1", start=now, requests=7, errors_4xx=0,
                                 errors_5xx=0, p50_ms=1.0, p95_ms=1.0, p99_ms=1.0, max_ms=1.0,
                                 instance="a:1"))
    assert killed
    assert [w.requests for w in serving.series("m", since=now - timedelta(minutes=1))] == [7]
    store.close()
