"""A state database made by a medops without owners, heartbeats and the audit chain keeps
working: the missing columns are added on open, its audit rows are sealed into the chain."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
)

from medops.storage import RunStatus, StateStore
from medops.storage.engine import add_missing_columns
from medops.storage.state import _ALL_TABLES

OLD = MetaData()
Table("runs", OLD,
      Column("id", String(64), primary_key=True), Column("status", String(16)),
      Column("trigger", String(64)), Column("config", JSON),
      Column("started_at", DateTime(timezone=True)),
      Column("finished_at", DateTime(timezone=True)), Column("error", Text),
      Column("pid", Integer), Column("host", String(255)), Column("mlflow_run_id", String(64)))
Table("audit_log", OLD,
      Column("id", Integer, primary_key=True, autoincrement=True),
      Column("at", DateTime(timezone=True)), Column("actor", String(255)),
      Column("action", String(64)), Column("target", String(255)), Column("details", JSON))

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def test_an_older_database_gains_the_new_columns_and_keeps_its_rows(state_url: str) -> None:
    engine = create_engine(state_url)
    OLD.create_all(engine)
    runs, audit = OLD.tables["runs"], OLD.tables["audit_log"]
    with engine.begin() as conn:
        conn.execute(runs.insert(), [
            {"id": "run-old-dead", "status": "running", "trigger": "manual", "config": {},
             "started_at": T0, "pid": 2**22 + 4242, "host": socket.gethostname()},
            {"id": "run-old-alive", "status": "running", "trigger": "manual", "config": {},
             "started_at": T0, "pid": os.getpid(), "host": socket.gethostname()},
        ])
        conn.execute(audit.insert(), [
            {"at": T0, "actor": "alice", "action": "model.approved", "target": "m/1",
             "details": {"note": "first"}},
            {"at": T0, "actor": "bob", "action": "model.rejected", "target": "m/2",
             "details": {"note": "second"}},
        ])
    engine.dispose()

    store = StateStore(state_url)
    columns = {c["name"] for c in inspect(store.engine).get_columns("runs")}
    assert {"owner", "heartbeat_at", "stale_after"} <= columns
    assert {c["name"] for c in inspect(store.engine).get_columns("audit_log")} >= {
        "prev_hash", "hash"}
    old = store.get_run("run-old-dead")
    assert old.owner is None and old.heartbeat_at is None and old.started_at == T0
    # Rows without heartbeats are judged as before: by pid, on their own host.
    assert store.mark_dead_runs_interrupted() == ["run-old-dead"]
    assert store.get_run("run-old-alive").status is RunStatus.RUNNING

    # The rows from before the chain are sealed into it by the first check or append.
    check = store.audit_trail.verify()
    assert check.intact and check.rows == 2
    store.audit("model.approved", "carol", "m/3", {"note": "third"})
    assert store.audit_trail.verify().rows == 3
    assert [a.actor for a in store.audit_log()] == ["carol", "bob", "alice"]
    # Opening it again adds nothing more.
    assert add_missing_columns(store.engine, _ALL_TABLES) == []
    store.close()
