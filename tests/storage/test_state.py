"""The state store against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import pytest

from medops.errors import NotFoundError, StoreError
from medops.storage import (
    Item,
    ItemStatus,
    RunStatus,
    Split,
    StateStore,
    StepStatus,
    drift_series_key,
)


def test_run_lifecycle(store: StateStore) -> None:
    run = store.create_run("run-1", "manual", {"project": "p"}, ["ingest", "train"])
    assert run.status is RunStatus.RUNNING and [s.name for s in run.steps] == ["ingest", "train"]
    assert all(s.status is StepStatus.PENDING for s in run.steps)
    store.update_step("run-1", "ingest", status=StepStatus.SUCCEEDED, attempts=1,
                      outputs={"new": 3})
    store.update_step("run-1", "train", status=StepStatus.FAILED, attempts=2, error="boom")
    store.finish_run("run-1", RunStatus.FAILED, "train failed")
    got = store.get_run("run-1")
    assert got.status is RunStatus.FAILED and got.error == "train failed"
    assert got.steps[0].outputs == {"new": 3} and got.steps[1].attempts == 2
    assert got.finished_at is not None and got.finished_at.tzinfo is not None
    assert store.get_run("run-").id == "run-1"  # a unique prefix is enough
    assert [r.id for r in store.list_runs()] == ["run-1"]
    with pytest.raises(NotFoundError, match="runs ls"):
        store.get_run("nope")
    store.create_run("run-2", "manual", {}, ["ingest"])
    with pytest.raises(NotFoundError, match=r"start of several runs \(run-1, run-2\)"):
        store.get_run("run-")
    with pytest.raises(NotFoundError, match="no run"):
        store.get_run("run_")  # a LIKE wildcard is a plain character here


def test_dead_process_marks_run_interrupted(store: StateStore) -> None:
    store.create_run("run-dead", "manual", {}, ["ingest"])
    store.set_run_fields("run-dead", pid=2**22 + 12345)  # no such process
    assert store.mark_dead_runs_interrupted() == ["run-dead"]
    assert store.get_run("run-dead").status is RunStatus.INTERRUPTED


def _item(uri: str, h: str, label: str = "a", **kw: object) -> Item:
    return Item(uri=uri, content_hash=h, source="s", label=label, **kw)  # type: ignore[arg-type]


def test_items_upsert_is_idempotent_and_tracks_changes(store: StateStore) -> None:
    assert store.upsert_items([_item("/x/1.dcm", "h1"), _item("/x/2.dcm", "h2")]) == (2, 0)
    assert store.upsert_items([_item("/x/1.dcm", "h1"), _item("/x/2.dcm", "h2")]) == (0, 0)
    assert store.upsert_items([_item("/x/2.dcm", "h3")]) == (0, 1)
    items = store.items()
    assert [i.content_hash for i in items] == ["h1", "h3"]
    first = items[0].id
    assert first is not None
    store.update_items([(first, {"status": ItemStatus.QUARANTINED, "reason": "bad"})])
    assert [i.uri for i in store.items(ItemStatus.QUARANTINED)] == ["/x/1.dcm"]
    assert store.item_counts() == {"s": {"quarantined": 1, "pending": 1}}


def test_frames_are_separate_items(store: StateStore) -> None:
    frames = [_item("/mf.dcm", "h", frame=f) for f in range(3)]
    assert store.upsert_items(frames) == (3, 0)
    assert sorted(i.key for i in store.items()) == ["h_f0", "h_f1", "h_f2"]


def test_split_groups_never_move(store: StateStore) -> None:
    store.assign_split_groups({"patient:a": Split.TRAIN})
    store.assign_split_groups({"patient:a": Split.TEST, "patient:b": Split.VAL})
    assert store.split_groups() == {"patient:a": Split.TRAIN, "patient:b": Split.VAL}


def test_events_are_deduplicated_by_idempotency_key(store: StateStore) -> None:
    first = store.add_event("data.arrived", {"n": 1}, idempotency_key="k1")
    assert first is not None and first.id is not None
    assert store.add_event("data.arrived", {"n": 1}, idempotency_key="k1") is None
    store.add_event("run.requested", {})
    assert [e.kind for e in store.event_log()] == ["run.requested", "data.arrived"]


def test_keyed_events_are_one_series_up_to_an_event(store: StateStore) -> None:
    def drift(model: str, version: int, hour: int) -> int:
        event = store.add_event("drift.detected", {"hour": hour},
                                idempotency_key=drift_series_key(model, version) + f"T{hour}")
        assert event is not None and event.id is not None
        return event.id

    a1, a2 = drift("cxr_v", 2, 10), drift("cxr_v", 2, 11)
    drift("cxr_v", 3, 11)  # another version
    drift("cxrXv", 2, 11)  # "_" is not a wildcard
    a3 = drift("cxr_v", 2, 12)
    series = store.keyed_events(drift_series_key("cxr_v", 2), a3)
    assert [e.id for e in series] == [a1, a2, a3]
    assert [e.payload["hour"] for e in store.keyed_events(drift_series_key("cxr_v", 2), a2)] == [
        10, 11]


def test_audit_log(store: StateStore) -> None:
    store.audit("model.registered", "medops", "m/1", {"run_id": "r"})
    store.audit("model.gate_failed", "medops", "m", {"reasons": ["low"]})
    log = store.audit_log()
    assert [a.action for a in log] == ["model.gate_failed", "model.registered"]
    assert store.audit_log(target="m/1")[0].details == {"run_id": "r"}


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match=r"storage\.state"):
        StateStore("postgresql+psycopg://nobody@127.0.0.1:1/none")
