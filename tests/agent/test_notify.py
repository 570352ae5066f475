"""Notifications through apprise to a real webhook on loopback: what they say, and no PHI."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from medops.agent.notify import Notifier, reminder_due
from medops.config.agent import NotifyConfig, NotifyOn
from medops.errors import ConfigError
from medops.storage import DecisionStatus, StateStore, drift_series_key
from tests.agent.conftest import Webhook, wait_for

PHI = "DOE^JANE"


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield store
    store.close()


def _decided(state: StateStore, kind: str, payload: dict[str, Any]) -> Any:
    event = state.add_event(kind, payload)
    assert event is not None and event.id is not None
    state.decide_event(event.id, DecisionStatus.HANDLED, "recorded", "test")
    return event


def test_each_notification_reaches_the_webhook_without_phi(state: StateStore,
                                                           webhook: Webhook) -> None:
    notifier = Notifier(NotifyConfig(urls=[webhook.url]), "chest-xray", state)
    gate = {"metric": "auc", "value": 0.91234, "threshold": 0.85, "reasons": ["auc 0.9123 >= 0.85"]}
    sent = [
        _decided(state, "run.finished", {"run_id": "run-1", "status": "failed",
                                         "failed_step": "validate", "error_type": "DataError"}),
        _decided(state, "run.finished", {"run_id": "run-2", "status": "succeeded", "gate": {
            **gate, "passed": False, "value": 0.61, "reasons": ["auc 0.6100 < min 0.85"]}}),
        _decided(state, "run.finished", {"run_id": "run-3", "status": "succeeded",
                                         "gate": {**gate, "passed": True}, "registered": {
                                             "name": "cxr", "version": "3",
                                             "approval": "pending"}}),
        _decided(state, "drift.detected", {"p_value": 0.0004, "version": "2",
                                           "patient_name": PHI}),
        _decided(state, "model.deployed", {"name": "cxr", "version": "3", "previous": "2",
                                           "action": "approve", "actor": "Dr. Who"}),
        # an interrupted run is not news
        _decided(state, "run.finished", {"run_id": "run-4", "status": "interrupted"}),
    ]
    notifier.start()
    for event in sent:
        notifier.submit(event)
    got = wait_for(lambda: len(webhook.received) >= 5 and webhook.received, 20, "5 messages")
    notifier.stop()
    by_title = {m["title"]: m for m in got}
    assert set(by_title) == {
        "[chest-xray] run run-1 failed", "[chest-xray] gate failed in run run-2",
        "[chest-xray] candidate v3 awaits approval", "[chest-xray] drift detected",
        "[chest-xray] model v3 deployed"}
    assert by_title["[chest-xray] run run-1 failed"]["message"] == (
        "run run-1 failed at step validate (DataError); details: `medops runs show run-1`")
    assert by_title["[chest-xray] run run-1 failed"]["type"] == "failure"
    assert "auc 0.61 (min 0.85)" in by_title["[chest-xray] gate failed in run run-2"]["message"]
    assert "`medops models approve cxr 3`" in \
        by_title["[chest-xray] candidate v3 awaits approval"]["message"]
    drift = by_title["[chest-xray] drift detected"]["message"]
    assert "p_value=0.0004" in drift and "version=2" in drift
    assert all(PHI not in m["message"] and "Dr. Who" not in m["message"] for m in got)
    assert {m["path"] for m in got} == {"/hook"}
    # Every event is marked notified: a restarted agent sends nothing twice.
    assert state.unnotified_events(["run.finished", "drift.detected", "model.deployed"]) == []


def test_only_the_chosen_notifications_are_sent(state: StateStore, webhook: Webhook) -> None:
    notifier = Notifier(NotifyConfig(urls=[webhook.url], events=[NotifyOn.MODEL_DEPLOYED]),
                        "p", state)
    notifier.start()
    notifier.submit(_decided(state, "drift.detected", {"p_value": 0.001}))
    notifier.submit(_decided(state, "model.deployed", {"name": "m", "version": "1"}))
    wait_for(lambda: webhook.received, 20, "a message")
    notifier.stop()
    assert [m["title"] for m in webhook.received] == ["[p] model v1 deployed"]


def test_a_bad_url_is_a_config_error_that_does_not_echo_it(state: StateStore) -> None:
    with pytest.raises(ConfigError, match=r"notify.urls\[0\] \(scheme 'nosuch'\)") as err:
        Notifier(NotifyConfig(urls=["nosuch://s3cret-token@host"]), "p", state)
    assert "s3cret" not in str(err.value)


def _drift(state: StateStore, version: str, window_end: str) -> Any:
    """A drift event keyed as the monitor keys it: one per model version and checked window."""
    payload = {"model": "cxr", "version": version, "n_current": 120}
    event = state.add_event("drift.detected", payload,
                            idempotency_key=drift_series_key("cxr", version) + window_end)
    assert event is not None and event.id is not None
    state.decide_event(event.id, DecisionStatus.HANDLED, "skipped", "test")
    return event


def test_a_version_that_keeps_drifting_is_one_message_per_drift_repeat(
        state: StateStore, webhook: Webhook) -> None:
    notifier = Notifier(NotifyConfig(urls=[webhook.url], drift_repeat=0.5), "p", state)
    notifier.start()
    for hour in ("10", "11", "12"):  # hourly checks of a drifting window, in one period
        notifier.submit(_drift(state, "2", f"2026-11-30T{hour}:00:00+00:00"))
    notifier.submit(_drift(state, "3", "2026-11-30T12:00:00+00:00"))  # another version: news
    wait_for(lambda: len(webhook.received) >= 2, 20, "two messages")
    time.sleep(0.6)  # the next period
    notifier.submit(_drift(state, "2", "2026-11-30T13:00:00+00:00"))
    wait_for(lambda: len(webhook.received) >= 3, 20, "the reminder")
    notifier.stop()
    bodies = [m["message"] for m in webhook.received]
    assert len(bodies) == 3, bodies
    assert "version=2" in bodies[0] and "since" not in bodies[0]
    assert "version=3" in bodies[1] and "since" not in bodies[1]
    assert "version=2" in bodies[2] and re.search(
        r"drifting since \d{4}-\d\d-\d\d \d\d:\d\d UTC, 4 checks so far$", bodies[2]), bodies[2]
    # The checks without a message are notified all the same: a restart sends none of them.
    assert state.unnotified_events(["drift.detected"]) == []


def test_drift_repeat_0_sends_every_drifted_check(state: StateStore, webhook: Webhook) -> None:
    notifier = Notifier(NotifyConfig(urls=[webhook.url], drift_repeat="0s"), "p", state)
    notifier.start()
    for hour in ("10", "11"):
        notifier.submit(_drift(state, "2", f"2026-11-30T{hour}:00:00+00:00"))
    wait_for(lambda: len(webhook.received) >= 2, 20, "two messages")
    notifier.stop()
    assert "2 checks so far" in webhook.received[1]["message"]


def test_reminder_periods_count_from_the_first_drift() -> None:
    t0 = datetime(2026, 11, 30, 10, tzinfo=timezone.utc)
    hours = [t0 + timedelta(hours=h) for h in range(50)]
    due = [h for h in range(1, 51) if reminder_due(hours[:h], repeat=86400)]
    assert due == [1, 25, 49]  # the first check, then the first of each next day
    gap = [t0, t0 + timedelta(hours=1), t0 + timedelta(days=3)]  # quiet for days, then again
    assert reminder_due(gap, repeat=86400)
    assert reminder_due(gap[:2], repeat=0)
