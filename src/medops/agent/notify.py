"""Notifications through apprise (email, Slack, Teams, generic webhooks ...): run failed, gate
failed, candidate awaiting approval, drift detected, model deployed.

They are built from events (``run.finished``, ``drift.detected``, ``model.deployed``), so they are
as durable as the events: an event's ``notified`` flag is set only once its message went out (or
failed for good), and an agent restarted in between sends it again (at least once).

A model version that keeps drifting (the monitor checks a 24 h window every hour) is one
message per ``notify.drift_repeat``, saying since when and how many checks it has failed; the
rest of its drift events are marked notified without a message.

Bodies carry ids, step names, error *types* and numbers, never an error message, a file name or
anything else that could hold PHI. Notification URLs hold secrets and are never logged.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from medops.config.agent import NotifyConfig, NotifyOn
from medops.errors import DependencyMissingError
from medops.storage import EventKind, EventRecord, StateStore, drift_series_key

log = logging.getLogger(__name__)

NOTIFYING_EVENTS = (EventKind.RUN_FINISHED, EventKind.DRIFT_DETECTED, EventKind.MODEL_DEPLOYED)
# Payload keys of drift and deployment events that are safe to repeat: model ids and figures.
_SAFE_TEXT_KEYS = {"name", "model", "version", "previous", "action", "alias", "test", "metric",
                   "feature", "window", "report_id", "baseline"}
_ATTEMPTS = 3


@dataclass(frozen=True)
class Notification:
    what: NotifyOn
    title: str
    body: str
    level: str  # apprise NotifyType value: info, success, warning, failure


def notification_for(event: EventRecord, project: str) -> Notification | None:
    """The message ``event`` calls for, or None."""
    p = event.payload
    if event.kind == EventKind.RUN_FINISHED:
        return _for_run(p, project)
    if event.kind == EventKind.DRIFT_DETECTED:
        return Notification(NotifyOn.DRIFT_DETECTED, f"[{project}] drift detected",
                            f"drift detected{_details(p)}; the agent decides on retraining "
                            "(`medops events ls --kind drift.detected`)", "warning")
    if event.kind == EventKind.MODEL_DEPLOYED:
        version = p.get("version")
        return Notification(NotifyOn.MODEL_DEPLOYED,
                            f"[{project}] model v{version} deployed",
                            f"{p.get('name', 'the model')} v{version} is the live champion"
                            f"{_details(p, skip={'name', 'version'})}", "success")
    return None


def _for_run(p: dict[str, Any], project: str) -> Notification | None:
    run = p.get("run_id")
    if p.get("status") == "failed":
        step = p.get("failed_step") or "?"
        return Notification(NotifyOn.RUN_FAILED, f"[{project}] run {run} failed",
                            f"run {run} failed at step {step} ({p.get('error_type', 'error')}); "
                            f"details: `medops runs show {run}`", "failure")
    gate = p.get("gate")
    if p.get("status") != "succeeded" or not isinstance(gate, dict):
        return None
    figures = f"{gate.get('metric')} {_num(gate.get('value'))} (min {_num(gate.get('threshold'))})"
    if not gate.get("passed"):
        reasons = "; ".join(str(r) for r in gate.get("reasons", []))
        return Notification(NotifyOn.GATE_FAILED, f"[{project}] gate failed in run {run}",
                            f"the model of run {run} failed its gate: {figures}; {reasons}",
                            "warning")
    reg = p.get("registered")
    if isinstance(reg, dict) and reg.get("approval") == "pending":
        version = reg.get("version")
        return Notification(NotifyOn.APPROVAL_PENDING,
                            f"[{project}] candidate v{version} awaits approval",
                            f"{reg.get('name')} v{version} from run {run} passed its gate: "
                            f"{figures}; approve it with "
                            f"`medops models approve {reg.get('name')} {version}`",
                            "info")
    return None


def reminder_due(series: list[datetime], repeat: float) -> bool:
    """Whether the last of ``series`` (one model version's drift events, oldest first) gets a
    message: the first does, then the first of every ``repeat`` seconds counted from it."""
    if repeat <= 0 or len(series) < 2:
        return True

    def period(t: datetime) -> int:
        return int((t - series[0]).total_seconds() // repeat)

    return period(series[-1]) != period(series[-2])


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _details(p: dict[str, Any], skip: frozenset[str] | set[str] = frozenset()) -> str:
    parts = [f"{k}={_num(v)}" for k, v in sorted(p.items()) if k not in skip and (
        (isinstance(v, (int, float)) and not isinstance(v, bool))
        or (k in _SAFE_TEXT_KEYS and isinstance(v, str) and len(v) <= 64))]
    return f" ({', '.join(parts)})" if parts else ""


class Notifier:
    """Sends notifications from a background thread; marks each event notified afterwards."""

    def __init__(self, cfg: NotifyConfig, project: str, state: StateStore) -> None:
        self.cfg = cfg
        self.project = project
        self.state = state
        self._queue: queue.Queue[EventRecord | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="notifier", daemon=True)
        self._apprise: Any = None
        if cfg.urls:
            self._apprise = _build(cfg.urls)

    def start(self) -> None:
        # Decided events whose notification did not go out before a crash go out now.
        for event in self.state.unnotified_events(NOTIFYING_EVENTS):
            self._queue.put(event)
        self._thread.start()

    def submit(self, event: EventRecord) -> None:
        if event.kind in NOTIFYING_EVENTS:
            self._queue.put(event)

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self._send(event)
            except Exception:  # a notification problem must never stop the agent
                log.exception("notification for event %s failed", event.id)
            if event.id is not None:
                self.state.mark_notified(event.id)

    def _send(self, event: EventRecord) -> None:
        note = notification_for(event, self.project)
        if note is None or self._apprise is None or note.what not in self.cfg.events:
            return
        if note.what is NotifyOn.DRIFT_DETECTED:
            note = self._drift_reminder(event, note)
            if note is None:
                return
        for attempt in range(1, _ATTEMPTS + 1):
            if self._apprise.notify(title=note.title, body=note.body, notify_type=note.level):
                log.info("notified: %s (event %s)", note.what.value, event.id)
                return
            time.sleep(0.5 * attempt)
        log.warning("could not deliver the %s notification for event %s to every URL after %d "
                    "attempts", note.what.value, event.id, _ATTEMPTS)

    def _drift_reminder(self, event: EventRecord, note: Notification) -> Notification | None:
        """``note`` for the first drift of a model version and then once per ``drift_repeat``
        (saying since when it drifts), None for the checks in between."""
        model, version = event.payload.get("model"), event.payload.get("version")
        if model is None or version is None or event.id is None:
            return note
        events = self.state.keyed_events(drift_series_key(model, version), event.id)
        if not events or events[-1].id != event.id:  # not keyed as the monitor keys them
            return note
        series = [e.created_at for e in events]
        if not reminder_due(series, self.cfg.drift_repeat):
            log.info("drift of %s v%s again (check %d): within notify.drift_repeat of the last "
                     "message, none sent (event %s)", model, version, len(series), event.id)
            return None
        if len(series) == 1:
            return note
        return replace(note, body=f"{note.body}; drifting since {series[0]:%Y-%m-%d %H:%M} UTC, "
                                  f"{len(series)} checks so far")


def _build(urls: list[str]) -> Any:
    try:
        import apprise
    except ModuleNotFoundError as exc:
        raise DependencyMissingError("apprise", "agent", "notifications") from exc
    from medops.errors import ConfigError

    obj = apprise.Apprise()
    for n, url in enumerate(urls):
        if not obj.add(url):
            # The URL itself may hold a token: name its position and scheme only.
            scheme = url.split("://", 1)[0] if "://" in url else "?"
            raise ConfigError(f"notify.urls[{n}] (scheme {scheme!r}) is not a URL apprise "
                              "understands; see https://github.com/caronc/apprise/wiki")
    return obj
