"""The retraining policy's decisions and the reasons it gives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from medops.agent.newdata import NewData
from medops.agent.policy import Policy, Verdict
from medops.config import parse_config
from medops.storage import DecisionStatus, EventRecord

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=timezone.utc)


def _policy(**agent: Any) -> Policy:
    cfg = parse_config({"project": "p", "agent": {"cooldown": "10m", **agent}, "triggers": [
        {"on": "data.arrived", "min_new_items": 500, "debounce": "10s"},
        {"on": "drift.detected"},
        {"on": "run.requested"},
        {"on": "schedule", "cron": "0 3 * * *", "name": "nightly"},
    ]})
    return Policy(cfg.triggers, cfg.agent)


def _event(id_: int, kind: str, ago: float = 60, **payload: Any) -> EventRecord:
    return EventRecord(kind=kind, payload=payload, created_at=NOW - timedelta(seconds=ago),
                       id=id_)


def _data(n: int) -> Any:
    calls: list[int] = []

    def count() -> NewData:
        calls.append(1)
        return NewData(n, "the champion's dataset ds-abc")

    count.calls = calls  # type: ignore[attr-defined]
    return count


def test_too_little_new_data_is_skipped_with_the_count() -> None:
    out = _policy().decide([_event(1, "data.arrived")], NOW, None, None, _data(12))
    d = out.decisions[1]
    assert (d.status, d.verdict) == (DecisionStatus.HANDLED, Verdict.SKIPPED)
    assert d.reason == ("only 12 new labelled item(s) < min_new_items 500 since the champion's "
                        "dataset ds-abc")
    assert not out.start


def test_enough_new_data_starts_one_run_for_a_burst() -> None:
    burst = [_event(i, "data.arrived", ago=60 - i) for i in (1, 2, 3)]
    out = _policy().decide(burst, NOW, None, None, _data(800))
    assert [e.id for e, _ in out.start] == [1, 2, 3]  # the first starts, the rest coalesce
    assert "800 new labelled item(s) >= min_new_items 500" in out.start[0][1]


def test_arrivals_are_debounced_until_the_burst_is_quiet() -> None:
    count = _data(800)
    out = _policy().decide([_event(1, "data.arrived", ago=30), _event(2, "data.arrived", ago=4)],
                           NOW, None, None, count)
    assert {d.verdict for d in out.decisions.values()} == {Verdict.DEBOUNCED}
    assert out.wake_at == NOW + timedelta(seconds=6)
    assert "debounced until 2026-11-22T12:00:06Z" in out.decisions[1].reason
    assert not count.calls  # nothing is counted before the quiet time


def test_one_pipeline_at_a_time() -> None:
    events = [_event(1, "drift.detected"), _event(2, "schedule.fired", schedule="nightly")]
    out = _policy().decide(events, NOW, "run-x", None, _data(0))
    assert out.decisions[1].status is DecisionStatus.WAITING
    assert out.decisions[1].reason == "run run-x is running; decided again when it ends"
    assert out.decisions[2].verdict is Verdict.SKIPPED
    assert out.decisions[2].reason == "run run-x is already running"


def test_cooldown_holds_automatic_triggers_but_not_a_person() -> None:
    finished = NOW - timedelta(minutes=4)
    events = [_event(1, "drift.detected"), _event(2, "schedule.fired", schedule="nightly"),
              _event(3, "run.requested", by="dr-lee")]
    out = _policy().decide(events, NOW, None, finished, _data(0))
    assert out.decisions[1].verdict is Verdict.COOLDOWN
    assert out.decisions[1].reason == "cooldown after the last run, until 2026-11-22T12:06:00Z"
    assert out.decisions[2].verdict is Verdict.SKIPPED
    assert out.wake_at == NOW + timedelta(minutes=6)
    assert [(e.id, why) for e, why in out.start] == [(3, "requested by dr-lee")]


def _drift_policy(min_new_items: int) -> Policy:
    cfg = parse_config({"project": "p", "triggers": [
        {"on": "drift.detected", "min_new_items": min_new_items},
        {"on": "data.arrived", "min_new_items": 500, "debounce": 0}]})
    return Policy(cfg.triggers, cfg.agent)


def _drift(id_: int, version: str = "1") -> EventRecord:
    return _event(id_, "drift.detected", version=version, reasons=["embedding", "intensity"])


def test_drift_waits_for_enough_new_labelled_data() -> None:
    out = _drift_policy(50).decide([_drift(1)], NOW, None, None, _data(12), lambda: "1")
    d = out.decisions[1]
    assert (d.status, d.verdict) == (DecisionStatus.HANDLED, Verdict.SKIPPED)
    assert d.reason == ("v1 drifted (embedding, intensity), but only 12 new labelled item(s) "
                        "< min_new_items 50 since the champion's dataset ds-abc")
    assert not out.start


def test_drift_with_enough_new_data_starts_a_run_counting_once() -> None:
    count = _data(60)
    out = _drift_policy(50).decide([_drift(1), _event(2, "data.arrived")], NOW, None, None,
                                   count, lambda: "1")
    assert [(e.id, why) for e, why in out.start] == [(1, (
        "v1 drifted (embedding, intensity); 60 new labelled item(s) >= min_new_items 50 since "
        "the champion's dataset ds-abc"))]
    assert out.decisions[2].reason.startswith("only 60 new labelled item(s) < min_new_items 500")
    assert len(count.calls) == 1  # one count per decision, however many triggers need it


def test_drift_of_a_replaced_version_starts_nothing() -> None:
    """Alarms about v1 stored while the run that replaced v1 was going are moot once v2 is
    live: they must not start a second retraining on the same data."""
    count = _data(0)
    out = _drift_policy(0).decide([_drift(1, "1"), _drift(2, "2")], NOW, None, None, count,
                                  lambda: "2")
    assert out.decisions[1].verdict is Verdict.SKIPPED
    assert out.decisions[1].reason == "v1 drifted but is no longer live (the champion is v2)"
    assert [(e.id, why) for e, why in out.start] == [(2, "v2 drifted (embedding, intensity)")]
    assert not count.calls  # min_new_items 0: no count needed
    # Moot at once: not held back by the cooldown after the run that replaced v1.
    cooling = _drift_policy(0).decide([_drift(3, "1")], NOW, None, NOW, count, lambda: "2")
    assert cooling.decisions[3].reason == "v1 drifted but is no longer live (the champion is v2)"


def test_events_without_a_trigger_are_ignored() -> None:
    cfg = parse_config({"project": "p", "triggers": [{"on": "run.requested"}]})
    out = Policy(cfg.triggers, cfg.agent).decide(
        [_event(1, "drift.detected"), _event(2, "schedule.fired", schedule="other")], NOW, None,
        None, _data(0))
    assert out.decisions[1].reason == "no `on: drift.detected` trigger in medops.yaml"
    assert out.decisions[2].reason == "no schedule 'other' trigger in medops.yaml"
    assert all(d.verdict is Verdict.IGNORED for d in out.decisions.values())


def test_triggers_config_reads_yaml_on_keys_and_durations() -> None:
    import yaml

    raw = yaml.safe_load("project: p\ntriggers:\n  - {on: data.arrived, debounce: 10m}\n"
                         "  - {on: schedule, every: 2s}\nagent: {cooldown: 1h}\n")
    cfg = parse_config(raw)
    assert cfg.triggers[0].debounce == 600.0  # type: ignore[union-attr]
    assert cfg.triggers[1].key == "every 2s"  # type: ignore[union-attr]
    assert cfg.agent.cooldown == 3600.0


@pytest.mark.parametrize("bad, message", [
    ({"on": "schedule"}, "exactly one of cron or every"),
    ({"on": "schedule", "cron": "61 * * * *"}, "not a valid cron expression"),
    ({"on": "data.arrived", "debounce": "soon"}, "is not a duration"),
    ({"on": "data.arived"}, "data.arived"),
])
def test_bad_triggers_are_config_errors(bad: dict[str, Any], message: str) -> None:
    from medops.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config({"project": "p", "triggers": [bad]})
