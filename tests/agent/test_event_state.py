"""Event processing state in the store: claims are atomic with their run, on SQLite and
PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from medops.storage import DecisionStatus, RunStatus, StateStore

STEPS = ["ingest", "train"]


@pytest.fixture
def state(state_url: str) -> Iterator[StateStore]:
    store = StateStore(state_url)
    yield store
    store.close()


def test_a_run_is_created_with_its_claims_and_only_once(state: StateStore) -> None:
    a = state.add_event("data.arrived", {"new": 3}, "folder:abc")
    b = state.add_event("drift.detected", {"p_value": 0.001}, "drift:1")
    assert a is not None and b is not None and a.id is not None and b.id is not None
    assert state.add_event("data.arrived", {"new": 3}, "folder:abc") is None  # duplicate
    assert [e.id for e in state.open_events()] == [a.id, b.id]

    claims = {a.id: ("started", "started run r1"), b.id: ("coalesced", "covered by run r1")}
    assert state.claim_events_for_run("r1", "data.arrived#1", {}, STEPS, claims)
    # The same event cannot create a second run: the id is taken, nothing changes.
    assert not state.claim_events_for_run("r1", "data.arrived#1", {}, STEPS, claims)
    assert [r.id for r in state.list_runs()] == ["r1"]
    assert state.run_ids(RunStatus.RUNNING) == ["r1"]
    open_ = {e.id: e.decision for e in state.open_events()}
    decision = open_[a.id]
    assert decision is not None and decision.status is DecisionStatus.CLAIMED
    assert decision.run_id == "r1"

    state.finish_run("r1", RunStatus.SUCCEEDED)
    state.release_claims("r1")
    assert state.open_events() == []
    log = state.event_log()
    assert [(e.id, e.decision.decision if e.decision else None) for e in log] == [
        (b.id, "coalesced"), (a.id, "started")]
    assert state.last_run_finished_at() is not None


def test_waiting_decisions_stay_open_and_notified_is_kept(state: StateStore) -> None:
    e = state.add_event("drift.detected", {})
    assert e is not None and e.id is not None
    state.decide_event(e.id, DecisionStatus.WAITING, "cooldown", "until later")
    assert [x.id for x in state.unnotified_events(["drift.detected"])] == [e.id]
    state.mark_notified(e.id)
    state.decide_event(e.id, DecisionStatus.HANDLED, "skipped", "gone")
    assert state.unnotified_events(["drift.detected"]) == []
    (only,) = state.event_log("drift.detected")
    assert only.decision is not None and only.decision.notified
    assert state.open_events() == []
