"""The audit log's hash chain on SQLite and PostgreSQL: tampering by raw SQL is found, and
concurrent writers never fork the chain."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner, Result

from medops.cli.main import app
from medops.storage import AuditEntry, StateStore
from medops.storage.audit import row_hash


def _approvals(store: StateStore, n: int) -> None:
    for i in range(n):
        store.audit("model.approved", f"dr-{i}", f"cxr/{i}", {"note": f"ok {i}", "n": i})


def _sql(store: StateStore, statement: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement))


def test_each_row_carries_the_hash_of_the_one_before(store: StateStore) -> None:
    _approvals(store, 3)
    rows = list(reversed(store.audit_log()))
    assert [r.prev_hash for r in rows] == ["", rows[0].hash, rows[1].hash]
    first = rows[0]
    assert first.hash == row_hash("", first.action, first.actor, first.target, first.details,
                                  first.at)
    check = store.audit_trail.verify()
    assert check.intact and check.rows == 3 and check.broken_id is None


@pytest.mark.parametrize(("tamper", "row", "what"), [
    ("UPDATE audit_log SET details = '{\"note\": \"forged\", \"n\": 1}' WHERE id = 2", 2,
     "no longer match its hash"),
    ("UPDATE audit_log SET actor = 'mallory' WHERE id = 3", 3, "no longer match its hash"),
    ("DELETE FROM audit_log WHERE id = 2", 3, "prev_hash does not match the hash of row 1"),
    ("UPDATE audit_log SET hash = NULL WHERE id = 1", 1, "no hash"),
])
def test_a_row_changed_or_deleted_by_hand_is_named(store: StateStore, tamper: str, row: int,
                                                    what: str) -> None:
    _approvals(store, 4)
    _sql(store, tamper)
    check = store.audit_trail.verify()
    assert not check.intact and check.broken_id == row
    assert check.problem is not None and what in check.problem


def test_rows_deleted_at_the_end_are_found_by_the_head(store: StateStore) -> None:
    _approvals(store, 3)
    _sql(store, "DELETE FROM audit_log WHERE id = 3")
    check = store.audit_trail.verify()
    assert not check.intact and check.rows == 2
    assert check.problem is not None and "its head records 3" in check.problem


def test_concurrent_writers_never_fork_the_chain(state_url: str) -> None:
    stores = [StateStore(state_url) for _ in range(4)]
    errors: list[BaseException] = []

    def write(store: StateStore, who: int) -> None:
        try:
            for i in range(15):
                store.audit("model.rejected", f"writer-{who}", f"m/{i}", {"i": i})
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    check = stores[0].audit_trail.verify()
    assert check.intact and check.rows == 60
    hashes = [r.prev_hash for r in stores[0].audit_log(limit=100)]
    assert len(set(hashes)) == 60  # no two rows follow the same row
    for s in stores:
        s.close()


def test_a_deployment_and_its_audit_row_commit_together(store: StateStore) -> None:
    at = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
    note = AuditEntry(action="model.approved", actor="dr-lee", target="cxr/2",
                      details={"note": "reviewed", "previous": "1"}, at=at)
    store.record_deployment("cxr", "2", "dr-lee", "reviewed", "approve", at, audit=note)
    (row,) = store.audit_log()
    assert (row.action, row.target, row.at) == ("model.approved", "cxr/2", at)
    assert store.deployments("cxr")[0].live_from == at
    assert store.audit_trail.verify().intact
    # An audit row that cannot be written takes its deployment with it.
    bad = AuditEntry(action="model.approved", actor="dr-lee", target="cxr/3",
                     details={"note": object()}, at=at)
    with pytest.raises(TypeError):
        store.record_deployment("cxr", "3", "dr-lee", "x", "approve", audit=bad)
    assert [d.version for d in store.deployments("cxr")] == ["2"]
    assert len(store.audit_log()) == 1


def test_models_history_verify_says_intact_or_names_the_row(tmp_path: Path) -> None:
    from medops.project import Project

    Project.init(tmp_path / "p", name="chain")
    root = str(tmp_path / "p")
    project = Project.load(Path(root))
    _approvals(project.state, 3)

    def history(*extra: str) -> Result:
        return CliRunner().invoke(app, ["models", "history", "chain-classifier", "--verify",
                                        "-C", root, *extra])

    ok = history()
    assert ok.exit_code == 0 and "audit chain intact (3 rows)" in ok.output
    assert json.loads(history("--json").stdout) == {"intact": True, "rows": 3,
                                                    "broken_id": None, "problem": None}
    _sql(project.state, "UPDATE audit_log SET actor = 'mallory' WHERE id = 2")
    broken = history()
    assert broken.exit_code == 9  # StoreError: the state store is inconsistent
    assert "audit chain broken at row 2" in " ".join(broken.output.split())
    project.close()
