"""The agent: a foreground loop that turns stored events into decisions and runs.

Durability, in the order things happen:

* a feed stores an event (idempotency key: a duplicate stores nothing) and wakes the loop;
  events of other processes are found by polling the DB every ``agent.poll_interval``;
* the policy decides; waiting decisions are written and looked at again later; a run is created
  **in the same transaction** that claims its events, with an id derived from the first event,
  so a crash leaves both or neither and the same event can never create a second run;
* the run executes in a child process; when it ends, a ``run.finished`` event is stored, then
  the claims are released (handled). A restart finds claimed events, and resumes their run if it
  was interrupted or finishes the bookkeeping if it had ended.

SIGTERM/SIGINT: the feeds stop, the running step is interrupted (training keeps its last epoch
checkpoint), the run is marked interrupted and resumes at the next start.

Several agents, one state (separate folders or machines sharing ``storage.state``): one agent
acts, the others stand by. The active one holds a **leader lease** in the database (the
``leases`` row ``agent:PROJECT``: holder and expiry) and renews it every third of
``agent.lease``; a standby, warm and polling, takes it when it expires (the active agent was
killed, its machine died) or at once when it is released (a clean stop) or its holder was a
process of this machine that is gone. A lease rather than row locks on events (``SKIP
LOCKED``) because the policy is about the whole project, not one event: debounce, cooldown and
"one run at a time" need one decider, and its in-memory state is rebuilt from the store when
another takes over. Two safety nets stand under the lease: a run is created in the transaction
that claims its events *and* checks the lease is still held by this agent (a paused agent that
lost it cannot start a run), and runs are taken by compare-and-set (a resume happens once). A
run's liveness is its heartbeat (``pipeline.heartbeat``): the new leader resumes the runs
whose holders stopped beating. A second agent in the same folder is simply a standby.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from medops.agent.code_watch import CodeWatch, watched_branches
from medops.agent.feeds import FolderWatch, poll_sources
from medops.agent.leadership import Leadership
from medops.agent.newdata import NewData, count_new_items
from medops.agent.notify import Notifier
from medops.agent.policy import TRIGGER_EVENTS, Decision, Policy, Verdict
from medops.agent.runs import RunProcess, run_context, warm_up
from medops.agent.schedule import Schedule, ScheduledJob, slot_key
from medops.config import SourceKind, Step
from medops.config.agent import ScheduleTrigger
from medops.config.redact import config_snapshot
from medops.config.schema import MedopsConfig
from medops.data.sources import FolderSource
from medops.errors import PipelineError, StoreError
from medops.storage import (
    DecisionStatus,
    EventDecision,
    EventKind,
    EventRecord,
    RunRecord,
    RunStatus,
    StateStore,
    StepStatus,
    local_path,
)
from medops.storage.liveness import STALE_BEATS, Heartbeat, process_owner

if TYPE_CHECKING:  # the pipeline (torch, MLflow) loads in the run processes, not here
    from medops.executor import Executor
    from medops.registry import ModelRegistry, ModelVersionInfo, Tracker
    from medops.storage.artifact_sync import ArtifactSync

log = logging.getLogger("medops.agent")

_FULL_SCAN_EVERY = 30.0  # seconds; catches events committed out of id order (PostgreSQL)
_WATCH_EVERY = 1.0  # seconds between checks of a run that another process still holds
MonitorJob = tuple[Schedule, Callable[[datetime], None]]


class AgentWorkspace(Protocol):
    """What the agent needs of a project: a pipeline's workspace, and where network sources
    land (:class:`medops.project.Project` provides it all)."""

    @property
    def config(self) -> MedopsConfig: ...
    @property
    def root(self) -> Path: ...
    @property
    def state(self) -> StateStore: ...
    @property
    def artifacts(self) -> Path: ...
    @property
    def artifact_sync(self) -> ArtifactSync: ...
    @property
    def registry(self) -> ModelRegistry: ...
    @property
    def tracker(self) -> Tracker: ...
    def executor(self) -> Executor: ...
    def with_config(self, config: MedopsConfig) -> Any: ...
    @property
    def landing_dir(self) -> Path: ...
    @property
    def ingest_settings(self) -> Any: ...


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Agent:
    def __init__(self, ws: AgentWorkspace, monitor: MonitorJob | None = None,
                 log_level: int = logging.INFO) -> None:
        self.ws = ws
        self.config = ws.config
        self.state = ws.state
        self.policy = Policy(self.config.triggers, self.config.agent)
        # checked here, so that a standby with a wrong repo fails at start, not at takeover
        self._branches = watched_branches(self.config.triggers, ws.root)
        self.monitor = monitor
        self.log_level = log_level
        self.stopping = threading.Event()
        self._wakeup = threading.Event()
        self._pending: dict[int, EventRecord] = {}
        self._cursor = 0
        self._last_full = 0.0
        self._wake_at: datetime | None = None
        self._child: RunProcess | None = None
        self._held_elsewhere: str | None = None  # our run, still held by a dying process
        self._last_watch = 0.0
        self._to_resume: list[str] = []
        self._relaunched: set[str] = set()
        self._dirty = True  # decide at the first tick: recovered events may be waiting
        self._threads: list[Any] = []
        self._ctx = run_context()
        self.notifier = Notifier(self.config.notify, self.config.project, self.state)
        self.owner = process_owner()
        self.leadership = Leadership(self.state.leases, self.config.project, self.owner,
                                     self.config.agent.lease, self.stopping, self.request_stop)
        # beats for the runs this process holds: from their creation until their child takes
        # them (a forkserver still importing can take many seconds)
        self._heartbeat = Heartbeat(self.state.runs, self.owner, self.config.pipeline.heartbeat)

    # -- public ---------------------------------------------------------------------------
    def wake(self) -> None:
        """Something was stored: look now rather than at the next poll."""
        self._wakeup.set()

    def request_stop(self) -> None:
        self.stopping.set()
        self._wakeup.set()

    def run(self) -> None:
        """Run in the foreground until SIGTERM/SIGINT (or :meth:`request_stop`); as a standby
        until this agent holds the project's lease."""
        with self._signals():
            warming = threading.Thread(target=self._warm_up, name="warm-up", daemon=True)
            warming.start()  # a standby is warm when it takes over
            if not self.leadership.wait():
                log.info("stopped (standby)")
                return
            try:
                self._start()
                while not self.stopping.is_set():
                    self._tick()
                    self._wakeup.wait(self._timeout())
                    self._wakeup.clear()
            finally:
                self._shutdown()
                self.leadership.release()
        if self.leadership.lost.is_set():
            raise PipelineError(f"this agent lost the lease of project {self.config.project!r} "
                                "(another agent took over) and stopped, so that two agents "
                                "never act at once; start it again to stand by")

    @property
    def _stale_after(self) -> float:
        return self.config.pipeline.heartbeat * STALE_BEATS

    # -- start and stop -------------------------------------------------------------------
    def _reap(self) -> None:
        """Runs whose holder died (here or on another machine) become interrupted, their
        MLflow runs killed (medops.registry.runs)."""
        dead = self.state.mark_dead_runs_interrupted()
        if dead:  # MLflow loads into the agent only when there is a run to mark
            from medops.registry.runs import mark_mlflow_run

            for run_id in dead:
                mark_mlflow_run(self.ws, run_id, "KILLED")

    def _start(self) -> None:
        t0 = time.monotonic()
        self._heartbeat.start()
        self._reap()
        self.notifier.start()
        self._recover()
        self._start_feeds()
        log.info("ready in %.1fs: %d trigger(s), %s", time.monotonic() - t0,
                 len(self.config.triggers), ", ".join(self._feed_names) or "no feeds")

    def _warm_up(self) -> None:
        """Heavy imports now, beside the loop, rather than at the first run or decision."""
        t0 = time.monotonic()
        warm_up(self._ctx)  # the forkserver imports the pipeline (torch, MLflow) once
        self._champion_dataset()  # MLflow in this process, for the "sufficient data?" check
        log.info("warm in %.1fs: runs start without import delays", time.monotonic() - t0)

    def _start_feeds(self) -> None:
        self._feed_names: list[str] = []
        cfg = self.config
        source = cfg.data.source
        if cfg.agent.watch and source is not None and source.kind is SourceKind.FOLDER:
            path = local_path(self.ws.root, source.path, key="data.source.path")
            path.mkdir(parents=True, exist_ok=True)
            watch = FolderWatch(FolderSource(path.resolve(), cfg.data.labels, cfg.data.frames,
                                             csv_root=self.ws.root, task=cfg.task),
                                self.state, cfg.agent.watch_quiet, self.wake, self.stopping)
            watch.start()
            self._threads.append(watch)
            self._feed_names.append(f"watching {source.path}")
        polled = [n for n, s in cfg.data.sources.items() if s.kind != "dicom-scp"]
        if polled:
            self._job("sources", Schedule(every=cfg.agent.source_poll),
                      lambda _slot: poll_sources(cfg, self.ws, self.wake))
            self._feed_names.append(f"polling {', '.join(polled)}")
        if self._branches:
            code = CodeWatch(self._branches, self.state, self.wake, self.stopping)
            code.start()
            self._threads.append(code)
            self._feed_names.extend(f"watching branch {b.branch} of {b.repo}"
                                    for b in self._branches)
        for trigger in cfg.triggers:
            if isinstance(trigger, ScheduleTrigger):
                self._job(trigger.key, Schedule(cron=trigger.cron, every=trigger.every),
                          self._fire(trigger.key))
                self._feed_names.append(f"schedule {trigger.key!r}")
        if self.monitor is not None:
            schedule, check = self.monitor
            self._job("monitor", schedule, check)
            self._feed_names.append("monitor")

    def _job(self, name: str, schedule: Schedule, action: Callable[[datetime], None]) -> None:
        def act(slot: datetime) -> None:
            action(slot)
            self.wake()  # the action may have stored events (drift.detected, data.arrived)

        job = ScheduledJob(name, schedule, act, self.stopping)
        job.start()
        self._threads.append(job)

    def _fire(self, name: str) -> Callable[[datetime], None]:
        def fire(slot: datetime) -> None:
            at = slot.isoformat(timespec="milliseconds")
            if self.state.add_event(EventKind.SCHEDULE_FIRED, {"schedule": name, "at": at},
                                    slot_key(name, slot)):
                log.info("schedule %r fired for %s", name, at)

        return fire

    def _shutdown(self) -> None:
        self.stopping.set()
        for thread in self._threads:
            if isinstance(thread, FolderWatch):
                thread.stop()
            else:
                thread.join(2)
        if self._child is not None and self._child.alive:
            log.info("stopping: interrupting run %s (it resumes at the next start)",
                     self._child.run_id)
            if not self._child.stop(self.config.agent.stop_timeout):
                log.warning("run %s did not stop within %.0fs and was killed",
                            self._child.run_id, self.config.agent.stop_timeout)
        self._heartbeat.stop()
        self.notifier.stop()
        log.info("stopped")

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            self.request_stop()

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    # -- the loop -------------------------------------------------------------------------
    def _timeout(self) -> float:
        timeout = self.config.agent.poll_interval or 0.2
        if self._wake_at is not None:
            timeout = min(timeout, max(0.0, (self._wake_at - utcnow()).total_seconds()))
        return timeout

    def _tick(self) -> None:
        changed = self._read_events()
        if self._child is not None and not self._child.alive:
            child, self._child = self._child, None
            self._run_ended(child.run_id, child.exitcode)
            changed = True
        if self._held_elsewhere and time.monotonic() - self._last_watch > _WATCH_EVERY:
            self._last_watch = time.monotonic()
            self._reap()
            if self.state.get_run(self._held_elsewhere).status is not RunStatus.RUNNING:
                run_id, self._held_elsewhere = self._held_elsewhere, None
                self._run_ended(run_id, None)
                changed = True
        if self._child is None and self._held_elsewhere is None and self._to_resume:
            self._launch(self._to_resume.pop(0), resume=True)
        if changed or self._dirty or (self._wake_at is not None and utcnow() >= self._wake_at):
            self._dirty = False
            self._decide()

    def _read_events(self) -> bool:
        full = time.monotonic() - self._last_full > _FULL_SCAN_EVERY
        if full:
            self._last_full = time.monotonic()
        fresh = [e for e in self.state.open_events(0 if full else self._cursor)
                 if e.id is not None and e.id not in self._pending]
        for event in fresh:
            assert event.id is not None
            self._pending[event.id] = event
            self._cursor = max(self._cursor, event.id)
        return bool(fresh)

    def _decide(self) -> None:
        now = utcnow()
        undecided = sorted((e for e in self._pending.values()
                            if e.decision is None or e.decision.status is DecisionStatus.WAITING),
                           key=lambda e: e.id or 0)
        for event in [e for e in undecided if e.kind not in TRIGGER_EVENTS]:
            self._record(event, Decision(DecisionStatus.HANDLED, Verdict.RECORDED,
                                         "not a trigger"))
        triggers = [e for e in undecided if e.kind in TRIGGER_EVENTS]
        if not triggers:
            self._wake_at = None
            return
        outcome = self.policy.decide(triggers, now, self._running(),
                                     self.state.last_run_finished_at(), self._new_items,
                                     self._champion_version)
        for event in triggers:
            assert event.id is not None
            if event.id in outcome.decisions:
                self._record(event, outcome.decisions[event.id])
        self._wake_at = outcome.wake_at
        if outcome.start:
            self._start_run(outcome.start)

    def _record(self, event: EventRecord, d: Decision) -> None:
        assert event.id is not None
        old = event.decision
        if old is None or (old.status, old.decision, old.reason) != (d.status, d.verdict.value,
                                                                     d.reason):
            self.state.decide_event(event.id, d.status, d.verdict.value, d.reason)
            log.info("event %d %s: %s: %s", event.id, event.kind, d.verdict.value, d.reason)
        event.decision = EventDecision(event.id, d.status, d.verdict.value, d.reason, utcnow(),
                                       notified=old.notified if old else False)
        if old is None:
            self.notifier.submit(event)
        if d.status is DecisionStatus.HANDLED:
            self._pending.pop(event.id, None)

    def _running(self) -> str | None:
        if self._child is not None:
            return self._child.run_id
        if self._held_elsewhere is not None:
            return self._held_elsewhere
        self._reap()
        running = self.state.run_ids(RunStatus.RUNNING)
        return running[0] if running else None

    def _new_items(self) -> NewData:
        return count_new_items(self.ws, self._champion_dataset())

    def _champion_dataset(self) -> str | None:
        champion = self._champion("counting new data since the last run")
        return champion.tags.get("dataset_version") if champion else None

    def _champion_version(self) -> str | None:
        champion = self._champion("not checking whether a drift alarm is stale")
        return champion.version if champion else None

    def _champion(self, otherwise: str) -> ModelVersionInfo | None:
        from medops.registry import CHAMPION

        try:
            return self.ws.registry.by_alias(CHAMPION)
        except Exception as exc:  # tracking unreachable: decide without it
            log.warning("cannot read the champion (%s); %s", type(exc).__name__, otherwise)
            return None

    # -- runs -----------------------------------------------------------------------------
    def _start_run(self, start: list[tuple[EventRecord, str]]) -> None:
        primary, reason = start[0]
        assert primary.id is not None
        run_id = f"run-{primary.created_at:%Y%m%d-%H%M%S}-e{primary.id}"
        claims = {primary.id: (Verdict.STARTED.value, f"started run {run_id}: {reason}")}
        for event, why in start[1:]:
            assert event.id is not None
            claims[event.id] = (Verdict.COALESCED.value, f"covered by run {run_id} ({why})")
        try:
            created = self.state.claim_events_for_run(
                run_id, f"{primary.kind}#{primary.id}", config_snapshot(self.config),
                [s.value for s in Step], claims, lease=self.leadership.key,
                stale_after=self._stale_after)
        except StoreError:
            if self.leadership.held():
                raise
            self.leadership.give_up(f"run {run_id} was not started")
            return
        if not created:  # an earlier attempt created it: pick it up from the store instead
            log.warning("run %s already exists; recovering it", run_id)
            self._pending.clear()
            self._recover()
            return
        for event, _ in start:
            assert event.id is not None
            verdict, text = claims[event.id]
            self._record_claim(event, verdict, text, run_id)
            log.info("event %d %s: %s: %s", event.id, event.kind, verdict, text)
        self._launch(run_id, resume=False)

    def _record_claim(self, event: EventRecord, verdict: str, text: str, run_id: str) -> None:
        assert event.id is not None
        old = event.decision
        event.decision = EventDecision(event.id, DecisionStatus.CLAIMED, verdict, text, utcnow(),
                                       run_id=run_id, notified=old.notified if old else False)
        if old is None:
            self.notifier.submit(event)

    def _launch(self, run_id: str, resume: bool) -> None:
        if resume and not self.state.take_run(run_id, RunStatus.INTERRUPTED,
                                              stale_after=self._stale_after):
            log.warning("run %s is not interrupted any more; leaving it", run_id)
            self._held_elsewhere = run_id
            return
        fresh = self.ws.with_config(self.ws.config)  # no open connections: safe to send
        self._child = RunProcess(self._ctx, fresh, run_id, self.log_level, self.owner)
        self._child.start()
        log.info("run %s %s", run_id, "resumed" if resume else "started")

    def _run_ended(self, run_id: str, exitcode: int | None) -> None:
        self._reap()
        record = self.state.get_run(run_id)
        if record.status is RunStatus.RUNNING:  # held by a process we do not know: watch it
            self._held_elsewhere = run_id
            return
        if record.status is RunStatus.INTERRUPTED:
            if self.stopping.is_set():
                return  # claims stay: the next start resumes it
            if run_id not in self._relaunched:  # the child died (killed, out of memory)
                self._relaunched.add(run_id)
                log.warning("run %s was interrupted (exit code %s); resuming it once",
                            run_id, exitcode)
                self._to_resume.append(run_id)
                return
        self._close(record)

    def _close(self, record: RunRecord) -> None:
        """The run ended: announce it (run.finished), then release its events."""
        self.state.add_event(EventKind.RUN_FINISHED, run_summary(record),
                             f"{EventKind.RUN_FINISHED}:{record.id}")
        self.state.release_claims(record.id)
        for event_id in [i for i, e in self._pending.items()
                         if e.decision and e.decision.run_id == record.id]:
            del self._pending[event_id]
        log.info("run %s %s", record.id, record.status.value)

    def _recover(self) -> None:
        """Claimed events of runs from before a restart: resume or close their runs."""
        runs: dict[str, list[EventRecord]] = {}
        for event in self.state.open_events(0):
            assert event.id is not None
            self._pending[event.id] = event
            self._cursor = max(self._cursor, event.id)
            d = event.decision
            if d is not None and d.status is DecisionStatus.CLAIMED and d.run_id:
                runs.setdefault(d.run_id, []).append(event)
        for run_id, events in sorted(runs.items()):
            record = self.state.get_run(run_id)
            if record.status is RunStatus.RUNNING:
                self._held_elsewhere = run_id
            elif record.status is RunStatus.INTERRUPTED:
                if all(s.status is StepStatus.SUCCEEDED for s in record.steps):
                    self.state.finish_run(run_id, RunStatus.SUCCEEDED)
                    self._close(self.state.get_run(run_id))
                    continue
                for event in events:
                    d = event.decision
                    if d is not None and d.decision in (Verdict.STARTED, Verdict.RESUMED):
                        assert event.id is not None
                        self.state.decide_event(
                            event.id, DecisionStatus.CLAIMED, Verdict.RESUMED.value,
                            f"run {run_id} resumed after an agent restart ({d.reason})",
                            run_id)
                self._to_resume.append(run_id)
            else:
                self._close(record)


def run_summary(record: RunRecord) -> dict[str, Any]:
    """The ``run.finished`` payload: ids, statuses, step names, error types and figures."""
    steps = {s.name: s for s in record.steps}
    failed = next((s for s in record.steps if s.status is StepStatus.FAILED), None)
    out: dict[str, Any] = {"run_id": record.id, "status": record.status.value,
                           "trigger": record.trigger}
    if failed is not None:
        out["failed_step"] = failed.name
        out["error_type"] = (failed.error or "").split(":", 1)[0].strip() or "error"
    gate = steps.get("gate")
    if gate is not None and gate.status is StepStatus.SUCCEEDED:
        g = gate.outputs
        out["gate"] = {k: g.get(k) for k in ("passed", "metric", "value", "threshold",
                                             "reasons")}
    reg = steps.get("register")
    if reg is not None and reg.status is StepStatus.SUCCEEDED and reg.outputs.get("registered"):
        out["registered"] = {"name": reg.outputs.get("name"),
                             "version": reg.outputs.get("version"),
                             "approval": reg.outputs.get("approval", "pending")}
    return out


def request_run(state: Any, reason: str | None = None, by: str | None = None,
                key: str | None = None) -> EventRecord | None:
    """Store a ``run.requested`` event for the agent; None if ``key`` was used before."""
    import uuid

    payload = {k: v for k, v in (("reason", reason), ("by", by)) if v}
    return state.add_event(EventKind.RUN_REQUESTED, payload, key or f"request:{uuid.uuid4().hex}")
