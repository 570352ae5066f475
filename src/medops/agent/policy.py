"""The retraining policy: given the trigger events not yet handled, start a run or say why not.

Rules, in order, for each event:

1. no trigger in medops.yaml for its kind (or schedule name) -> handled, ``ignored``;
2. a pipeline is already running (one per project) -> a schedule firing is ``skipped``, anything
   else ``waiting`` and decided again when the run ends;
3. within ``agent.cooldown`` of the last run's end -> a schedule firing is ``skipped``, data and
   drift wait (``cooldown``); a person's ``run.requested`` is never held back by the cooldown;
4. ``data.arrived``: ``debounced`` until the trigger's quiet time after the newest arrival has
   passed, then the "sufficient data?" check: at least ``min_new_items`` new labelled valid items
   since the champion's dataset, else ``skipped`` with the count;
5. ``drift.detected``: the same "sufficient data?" check when its trigger sets
   ``min_new_items``; and, before rules 2 and 3, ``skipped`` when the version that drifted is no
   longer the champion (a run replaced it while the alarm waited: retraining again is moot);
6. ``code.changed`` and ``image.pushed`` match their trigger by repository and branch (by ECR
   repository and tag); a branch's ``baseline`` (its first sighting) is recorded without a run;
   with the trigger's ``debounce`` they wait for that quiet time after the newest such event;
7. everything still standing wants a run: one run starts for the first such event and the others
   are ``coalesced`` into it.

The policy only decides; :mod:`medops.agent.loop` writes the decisions and starts the run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from medops.agent.newdata import NewData
from medops.config.agent import (
    AgentConfig,
    CodeChangedTrigger,
    DataArrivedTrigger,
    DriftTrigger,
    ImagePushedTrigger,
    RunRequestedTrigger,
    ScheduleTrigger,
    Trigger,
)
from medops.config.enums import StrEnum
from medops.storage import DecisionStatus, EventKind, EventRecord

TRIGGER_EVENTS = (EventKind.DATA_ARRIVED, EventKind.DRIFT_DETECTED, EventKind.RUN_REQUESTED,
                  EventKind.SCHEDULE_FIRED, EventKind.CODE_CHANGED, EventKind.IMAGE_PUSHED)
Debounced = CodeChangedTrigger | ImagePushedTrigger
T = TypeVar("T")


class Verdict(StrEnum):
    STARTED = "started"  # a run was started for this event
    RESUMED = "resumed"  # its run was interrupted (agent restart) and continues
    COALESCED = "coalesced"  # covered by the run another event started
    SKIPPED = "skipped"  # no run, final (too little data, already running, cooldown)
    DEBOUNCED = "debounced"  # waiting for the quiet time after the newest arrival
    COOLDOWN = "cooldown"  # waiting for the cooldown after the last run
    WAITING = "waiting"  # waiting for the running pipeline to end
    IGNORED = "ignored"  # no trigger configured for it
    RECORDED = "recorded"  # not a trigger (run.finished, model.approved, ...): kept for history
    FINISHED = "finished"  # its run ended without finishing every step


@dataclass(frozen=True)
class Decision:
    status: DecisionStatus
    verdict: Verdict
    reason: str


@dataclass
class Outcome:
    decisions: dict[int, Decision] = field(default_factory=dict)  # events decided now, no run
    start: list[tuple[EventRecord, str]] = field(default_factory=list)  # [0] starts the run
    wake_at: datetime | None = None  # when a waiting event must be looked at again


def when(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Policy:
    def __init__(self, triggers: Sequence[Trigger], agent: AgentConfig) -> None:
        self.triggers = list(triggers)
        self.cooldown = timedelta(seconds=agent.cooldown)

    def trigger_for(self, event: EventRecord) -> Trigger | None:
        kind = event.kind
        for t in self.triggers:
            if ((kind == EventKind.DATA_ARRIVED and isinstance(t, DataArrivedTrigger))
                    or (kind == EventKind.DRIFT_DETECTED and isinstance(t, DriftTrigger))
                    or (kind == EventKind.RUN_REQUESTED and isinstance(t, RunRequestedTrigger))
                    or (kind == EventKind.SCHEDULE_FIRED and isinstance(t, ScheduleTrigger)
                        and event.payload.get("schedule") == t.key)
                    or (kind == EventKind.CODE_CHANGED and _same_branch(t, event))
                    or (kind == EventKind.IMAGE_PUSHED and _same_image(t, event))):
                return t
        return None

    def decide(self, events: Sequence[EventRecord], now: datetime, running: str | None,
               last_finished: datetime | None, new_items: Callable[[], NewData],
               champion: Callable[[], str | None] | None = None) -> Outcome:
        """Decide about ``events`` (trigger events not claimed by a run), oldest first.
        ``new_items`` and ``champion`` (the live version) are only called when needed."""
        out = Outcome()
        new_items = _once(new_items)
        live = _once(champion or (lambda: None))
        arrivals: list[tuple[EventRecord, DataArrivedTrigger]] = []
        drifts: list[tuple[EventRecord, DriftTrigger]] = []
        quiet: dict[Debounced, list[EventRecord]] = {}
        cooling_until = last_finished + self.cooldown if last_finished else None
        if cooling_until is not None and cooling_until <= now:
            cooling_until = None
        for event in events:
            assert event.id is not None
            trigger = self.trigger_for(event)
            scheduled = event.kind == EventKind.SCHEDULE_FIRED
            if trigger is None:
                out.decisions[event.id] = Decision(DecisionStatus.HANDLED, Verdict.IGNORED,
                                                   f"no {_wanted(event)} trigger in medops.yaml")
            elif event.kind == EventKind.CODE_CHANGED and event.payload.get("baseline"):
                out.decisions[event.id] = Decision(
                    DecisionStatus.HANDLED, Verdict.RECORDED,
                    f"baseline: {_why(event)} when the agent started watching; no run")
            elif isinstance(trigger, DriftTrigger) and (stale := _replaced(event, live)):
                out.decisions[event.id] = Decision(DecisionStatus.HANDLED, Verdict.SKIPPED,
                                                   stale)
            elif running is not None:
                out.decisions[event.id] = (
                    Decision(DecisionStatus.HANDLED, Verdict.SKIPPED,
                             f"run {running} is already running")
                    if scheduled else
                    Decision(DecisionStatus.WAITING, Verdict.WAITING,
                             f"run {running} is running; decided again when it ends"))
            elif cooling_until is not None and event.kind != EventKind.RUN_REQUESTED:
                reason = f"cooldown after the last run, until {when(cooling_until)}"
                out.decisions[event.id] = (
                    Decision(DecisionStatus.HANDLED, Verdict.SKIPPED, reason) if scheduled
                    else Decision(DecisionStatus.WAITING, Verdict.COOLDOWN, reason))
                out.wake_at = _earliest(out.wake_at, cooling_until)
            elif isinstance(trigger, DataArrivedTrigger):
                arrivals.append((event, trigger))
            elif isinstance(trigger, DriftTrigger):
                drifts.append((event, trigger))
            elif isinstance(trigger, (CodeChangedTrigger, ImagePushedTrigger)) \
                    and trigger.debounce > 0:
                quiet.setdefault(trigger, []).append(event)
            else:
                out.start.append((event, _why(event)))
        if arrivals:
            self._arrivals(arrivals, now, new_items, out)
        if drifts:
            self._drifts(drifts, new_items, out)
        for trigger, held in quiet.items():
            _debounce(trigger, held, now, out)
        out.start.sort(key=lambda pair: pair[0].id or 0)
        return out

    def _arrivals(self, arrivals: list[tuple[EventRecord, DataArrivedTrigger]], now: datetime,
                  new_items: Callable[[], NewData], out: Outcome) -> None:
        trigger = arrivals[0][1]
        quiet_until = max(e.created_at for e, _ in arrivals) + timedelta(
            seconds=trigger.debounce)
        if now < quiet_until:
            for event, _ in arrivals:
                assert event.id is not None
                out.decisions[event.id] = Decision(
                    DecisionStatus.WAITING, Verdict.DEBOUNCED,
                    f"debounced until {when(quiet_until)} (quiet time {trigger.debounce:g}s)")
            out.wake_at = _earliest(out.wake_at, quiet_until)
            return
        data = new_items()
        if data.count >= trigger.min_new_items:
            reason = (f"{data.count} new labelled item(s) >= min_new_items "
                      f"{trigger.min_new_items} since {data.since}")
            out.start.extend((event, reason) for event, _ in arrivals)
            return
        for event, _ in arrivals:
            assert event.id is not None
            out.decisions[event.id] = Decision(
                DecisionStatus.HANDLED, Verdict.SKIPPED,
                f"only {data.count} new labelled item(s) < min_new_items "
                f"{trigger.min_new_items} since {data.since}")

    def _drifts(self, drifts: list[tuple[EventRecord, DriftTrigger]],
                new_items: Callable[[], NewData], out: Outcome) -> None:
        for event, trigger in drifts:
            assert event.id is not None
            if not trigger.min_new_items:
                out.start.append((event, _why(event)))
                continue
            data, least = new_items(), trigger.min_new_items
            if data.count >= least:
                out.start.append((event, f"{_why(event)}; {data.count} new labelled item(s) "
                                         f">= min_new_items {least} since {data.since}"))
            else:
                out.decisions[event.id] = Decision(
                    DecisionStatus.HANDLED, Verdict.SKIPPED,
                    f"{_why(event)}, but only {data.count} new labelled item(s) < "
                    f"min_new_items {least} since {data.since}")


def _debounce(trigger: Debounced, events: list[EventRecord], now: datetime,
              out: Outcome) -> None:
    """Wait for ``trigger.debounce`` after the newest of ``events``, then start one run."""
    quiet_until = max(e.created_at for e in events) + timedelta(seconds=trigger.debounce)
    if now >= quiet_until:
        out.start.extend((e, _why(e)) for e in events)
        return
    for event in events:
        assert event.id is not None
        out.decisions[event.id] = Decision(
            DecisionStatus.WAITING, Verdict.DEBOUNCED,
            f"debounced until {when(quiet_until)} (quiet time {trigger.debounce:g}s)")
    out.wake_at = _earliest(out.wake_at, quiet_until)


def _same_branch(t: Trigger, event: EventRecord) -> bool:
    return (isinstance(t, CodeChangedTrigger)
            and str(event.payload.get("repo", "")).rstrip("/") == t.repo.rstrip("/")
            and event.payload.get("branch") == t.branch)


def _same_image(t: Trigger, event: EventRecord) -> bool:
    return (isinstance(t, ImagePushedTrigger)
            and event.payload.get("repository") == t.repository
            and (t.tag is None or event.payload.get("tag") == t.tag))


def _wanted(event: EventRecord) -> str:
    """The trigger an unmatched event would need, for the ``ignored`` reason."""
    p = event.payload
    if event.kind == EventKind.SCHEDULE_FIRED:
        return f"schedule {p.get('schedule')!r}"
    if event.kind == EventKind.CODE_CHANGED:
        return f"`on: code.changed` (repo {p.get('repo')!r}, branch {p.get('branch')!r})"
    if event.kind == EventKind.IMAGE_PUSHED:
        tag = f", tag {p.get('tag')!r}" if p.get("tag") else ""
        return f"`on: image.pushed` (repository {p.get('repository')!r}{tag})"
    return f"`on: {event.kind}`"


def _replaced(event: EventRecord, live: Callable[[], str | None]) -> str | None:
    """Why a drift alarm is moot, if it is: the version it is about is no longer live."""
    version = event.payload.get("version")
    if version is None:
        return None
    champion = live()
    if champion is None or champion == str(version):
        return None
    return f"v{version} drifted but is no longer live (the champion is v{champion})"


def _once(read: Callable[[], T]) -> Callable[[], T]:
    """``read`` called at most once per decision (counting new items validates pending ones
    and reads a manifest; the champion is a tracking-server call)."""
    memo: list[T] = []

    def once() -> T:
        if not memo:
            memo.append(read())
        return memo[0]

    return once


def _why(event: EventRecord) -> str:
    if event.kind == EventKind.SCHEDULE_FIRED:
        return f"schedule {event.payload.get('schedule')!r} fired"
    if event.kind == EventKind.RUN_REQUESTED:
        by = event.payload.get("by")
        return f"requested by {by}" if by else "requested"
    if event.kind == EventKind.DRIFT_DETECTED and event.payload.get("version") is not None:
        reasons = event.payload.get("reasons")
        what = f" ({', '.join(map(str, reasons))})" if isinstance(reasons, list) and reasons \
            else ""
        return f"v{event.payload['version']} drifted{what}"
    if event.kind == EventKind.CODE_CHANGED:
        p = event.payload
        return (f"branch {p.get('branch')} of {p.get('repo')} at "
                f"{str(p.get('commit', '?'))[:12]}")
    if event.kind == EventKind.IMAGE_PUSHED:
        p = event.payload
        tag = f":{p['tag']}" if p.get("tag") else ""
        return f"image {p.get('repository')}{tag} pushed ({str(p.get('digest', '?'))[:19]})"
    return f"{event.kind}"


def _earliest(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


__all__ = ["TRIGGER_EVENTS", "Decision", "Outcome", "Policy", "Verdict", "when"]
