"""Notifications through apprise to a real webhook on loopback: what they say, and no PHI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from medops.agent.notify import Notifier
from medops.config.agent import NotifyConfig, NotifyOn
from medops.errors import ConfigError
from medops.storage import DecisionStatus, StateStore
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
