"""The deployments history: which version was live when, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from medops.storage import StateStore


def test_each_deployment_ends_the_one_before(store: StateStore) -> None:
    t0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    a = store.record_deployment("m", "1", "alice", "first", "approve", t0)
    b = store.record_deployment("m", "2", "bob", "second", "approve", t0 + timedelta(hours=1))
    store.record_deployment("other", "7", "carol", "unrelated", "approve", t0 + timedelta(hours=2))
    history = store.deployments("m")
    assert [(d.version, d.actor, d.note) for d in history] == \
        [("1", "alice", "first"), ("2", "bob", "second")]
    assert history[0].live_from == t0 and history[0].live_until == b.live_from
    assert history[1].live_until is None and a.id is not None
    assert store.live_deployment("m", t0 - timedelta(seconds=1)) is None
    assert store.live_deployment("m", t0 + timedelta(minutes=59)).version == "1"  # type: ignore[union-attr]
    assert store.live_deployment("m", t0 + timedelta(hours=1)).version == "2"  # type: ignore[union-attr]
    assert store.live_deployment("m").version == "2"  # type: ignore[union-attr]
    assert store.live_deployment("other").version == "7"  # type: ignore[union-attr]
    assert store.deployments("nothing") == []
