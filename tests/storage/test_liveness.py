"""Run liveness by heartbeat (not by a pid another machine cannot see) and leases, on SQLite
and PostgreSQL."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from medops.errors import StoreError
from medops.storage import RunStatus, StateStore
from medops.storage.liveness import Heartbeat, Owner, process_owner

NO_SUCH_PID = 2**22 + 4321  # above Linux's pid_max: never a live process here


def _here(pid: int) -> str:
    """An owner string of this node with ``pid``."""
    return f"{pid}@{socket.gethostname()}#{Owner.parse(process_owner()).node}.feed00"


def test_a_run_of_another_machine_is_judged_by_its_heartbeat_alone(store: StateStore) -> None:
    store.create_run("run-remote", "manual", {}, ["ingest"], stale_after=0.5)
    # Its pid means nothing here: another node, whose heartbeat is fresh, is alive.
    store.set_run_fields("run-remote", owner=f"{NO_SUCH_PID}@gpu-box#0badc0de.abcdef",
                         pid=NO_SUCH_PID, host="gpu-box")
    assert store.mark_dead_runs_interrupted() == []
    time.sleep(0.7)  # no beat for longer than stale_after
    assert store.mark_dead_runs_interrupted() == ["run-remote"]
    run = store.get_run("run-remote")
    assert run.status is RunStatus.INTERRUPTED and run.error == "interrupted: its heartbeat stopped"


def test_a_run_of_this_node_whose_process_is_gone_is_dead_at_once(store: StateStore) -> None:
    store.create_run("run-local", "manual", {}, ["ingest"], stale_after=3600)
    store.set_run_fields("run-local", owner=_here(NO_SUCH_PID), pid=NO_SUCH_PID)
    assert store.mark_dead_runs_interrupted() == ["run-local"]
    assert store.get_run("run-local").error == "interrupted: its process is gone"


def test_a_heartbeat_keeps_its_run_alive_and_hears_when_it_is_taken(store: StateStore) -> None:
    me = process_owner()
    run = store.create_run("run-beat", "manual", {}, ["ingest"], stale_after=0.6)
    assert run.owner == me and run.heartbeat_at is not None
    lost = threading.Event()
    with Heartbeat(store.runs, me, 0.15, "run-beat", on_lost=lambda _: lost.set()):
        time.sleep(1.0)  # well past stale_after: only the beats keep it alive
        assert store.mark_dead_runs_interrupted() == []
        later = store.get_run("run-beat").heartbeat_at
        assert later is not None and later > run.heartbeat_at
        # Another process takes the run (as a resume after judging it dead would).
        store.set_run_fields("run-beat", owner="1@elsewhere#0badc0de.000001")
        assert lost.wait(2), "the heartbeat did not notice the run was taken"
    # The process that lost it cannot overwrite how the new holder's run ends.
    assert not store.finish_run("run-beat", RunStatus.SUCCEEDED, owner=me)
    assert store.get_run("run-beat").status is RunStatus.RUNNING
    assert store.finish_run("run-beat", RunStatus.SUCCEEDED, owner="1@elsewhere#0badc0de.000001")


def test_a_lease_has_one_holder_until_it_expires_or_is_released(store: StateStore) -> None:
    leases = store.leases
    assert leases.acquire("agent:p", "a", 0.4).held
    taken = leases.acquire("agent:p", "b", 0.4)
    assert not taken.held and taken.holder == "a"
    assert leases.renew("agent:p", "a", 0.4)
    time.sleep(0.5)
    assert leases.acquire("agent:p", "b", 30).held  # expired: b takes it
    assert not leases.renew("agent:p", "a", 0.4)  # a learns it lost it
    leases.release("agent:p", "a")  # not a's: changes nothing
    assert leases.state("agent:p", "b").held
    leases.release("agent:p", "b")
    assert leases.acquire("agent:p", "c", 30).held  # released: at once


def test_a_lease_of_a_dead_process_of_this_node_is_taken_at_once(store: StateStore) -> None:
    dead = _here(NO_SUCH_PID)
    assert store.leases.acquire("agent:p", dead, 3600).held
    assert store.leases.acquire("agent:p", process_owner(), 30).held


def test_a_run_is_claimed_only_under_a_lease_still_held(store: StateStore) -> None:
    event = store.add_event("run.requested", {})
    assert event is not None and event.id is not None
    claims = {event.id: ("started", "started run r1")}
    assert store.leases.acquire("agent:p", "a", 0.2).held
    time.sleep(0.3)
    assert store.leases.acquire("agent:p", "b", 30).held  # a was paused past its expiry
    with pytest.raises(StoreError, match="no longer holds the lease"):
        store.claim_events_for_run("r1", "run.requested#1", {}, ["ingest"], claims,
                                   lease=("agent:p", "a"))
    assert store.list_runs() == [] and store.open_events()[0].decision is None
    assert store.claim_events_for_run("r1", "run.requested#1", {}, ["ingest"], claims,
                                      lease=("agent:p", "b"))
    assert [r.id for r in store.list_runs()] == ["r1"]
