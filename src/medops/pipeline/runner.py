"""Runs the pipeline: each step recorded, retried per config, and resumable after a crash.

An orchestrator (an Airflow DAG, ``medops export airflow``) runs one step per task with
:meth:`PipelineRunner.run_step`, under a run id it chooses. Between two of its tasks no process
holds the run, so the run is left ``interrupted`` (paused, with the next step named in its
error): a ``running`` run whose owner has exited would be reaped as dead, and an owner cleared
by hand would be a run no heartbeat can ever judge. ``interrupted`` is the state the reaper
leaves alone and the next task takes with a compare-and-set, as a resume does; a person can
also finish such a run with ``medops runs resume`` or give it up with ``medops runs discard``.
"""

from __future__ import annotations

import re
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from medops.config import parse_config
from medops.config.enums import Step
from medops.config.redact import config_snapshot
from medops.errors import (
    ConfigError,
    DataError,
    NotFoundError,
    PipelineError,
    StepFailedError,
    StoreError,
)
from medops.pipeline.context import (
    Reporter,
    RunContext,
    SilentReporter,
    Workspace,
)
from medops.pipeline.interrupt import Interrupt, caused_by_interrupt
from medops.pipeline.steps_data import ingest, preprocess, split, validate
from medops.pipeline.steps_model import evaluate, gate, register, train
from medops.registry.runs import mark_mlflow_run, reap_dead_runs
from medops.storage import RunRecord, RunStatus, StepStatus
from medops.storage.liveness import STALE_BEATS, Heartbeat, process_owner
from medops.train.entrypoints import check_architecture_exists

StepFn = Callable[[RunContext], dict[str, Any]]

STEPS: dict[Step, StepFn] = {
    Step.INGEST: ingest,
    Step.VALIDATE: validate,
    Step.SPLIT: split,
    Step.PREPROCESS: preprocess,
    Step.TRAIN: train,
    Step.EVALUATE: evaluate,
    Step.GATE: gate,
    Step.REGISTER: register,
}

_FIRST, _LAST = Step.INGEST, Step.REGISTER  # the step that creates a run, the one that ends it
# Errors that retrying cannot fix: bad data or configuration fail the step at once.
_NOT_RETRIED = (DataError, ConfigError)
# Sections a resumed run takes from the current medops.yaml rather than from its snapshot
# (which holds notification URLs masked: they are credentials).
_ENVIRONMENT = ("storage", "executor", "pipeline", "notify")


#: A run id an orchestrator may give: it names a folder and fits the state store's column.
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it can name a run, else a ConfigError saying what can."""
    if not _RUN_ID.fullmatch(run_id):
        raise ConfigError(f"run id {run_id!r} cannot name a run: use 1 to 64 letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit (e.g. "
                          "airflow-scheduled__2026-12-07T03-00-00)")
    return run_id


def _stale_after(ws: Workspace) -> float:
    return ws.config.pipeline.heartbeat * STALE_BEATS


def new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"run-{stamp}-{uuid.uuid4().hex[:6]}"


class PipelineRunner:
    def __init__(self, ws: Workspace, reporter: Reporter | None = None,
                 interrupt: Interrupt | None = None) -> None:
        """``interrupt``: the stop request a signal handler sets (see
        :meth:`Interrupt.on_signals`); a run stopped by it is ``interrupted``, never retried."""
        self.ws = ws
        self.reporter = reporter or SilentReporter()
        self.interrupt = interrupt or Interrupt()

    def run(self, trigger: str = "manual", until: Step | None = None) -> RunRecord:
        """Start a new run; stops after ``until`` when given (later steps stay pending). A
        network that cannot be found (an entry point's module, file or factory) is a
        ConfigError before the run starts."""
        check_architecture_exists(self.ws.config.model.architecture, self.ws.root)
        reap_dead_runs(self.ws)
        run_id = new_run_id()
        self.ws.state.create_run(run_id, trigger, config_snapshot(self.ws.config),
                                 [s.value for s in Step], _stale_after(self.ws))
        return self._execute(self.ws, run_id, until)

    def start(self, run_id: str, until: Step | None = None) -> RunRecord:
        """Execute ``run_id`` from its first unfinished step, with the configuration it was
        created with; the caller has taken it (``state.take_run``). The agent creates a run in
        the transaction that claims its event, so no crash can start one event's run twice."""
        return self._execute(self._run_workspace(self.ws.state.get_run(run_id)), run_id, until)

    def resume(self, run_id: str, until: Step | None = None) -> RunRecord:
        """Continue ``run_id`` from its first unfinished step, with the configuration it started
        with; only where things live and run (storage, executor, retries) come from the current
        medops.yaml, so a run that failed on infrastructure can be fixed and resumed."""
        reap_dead_runs(self.ws)
        record = self.ws.state.get_run(run_id)
        if record.status is RunStatus.RUNNING:
            raise PipelineError(f"run {record.id} is still running (pid {record.pid} on "
                                f"{record.host}); wait for it or stop that process first")
        if record.status is RunStatus.DISCARDED:
            raise PipelineError(f"run {record.id} was discarded; start a new one with "
                                "`medops run`")
        if all(s.status is StepStatus.SUCCEEDED for s in record.steps):
            raise PipelineError(f"run {record.id} already finished every step; start a new "
                                "one with `medops run`")
        ws = self._run_workspace(record)
        self.ws.state.claim_run(record.id, _stale_after(self.ws))
        return self._execute(ws, record.id, until)

    def run_step(self, run_id: str, step: Step, trigger: str = "manual") -> RunRecord:
        """Execute ``step`` alone in ``run_id``, as one task of an orchestrator: the first step
        creates the run (with ``trigger``), a later one continues it with the outputs of its
        finished steps. One attempt: the orchestrator retries (the exported DAG's retries are
        ``pipeline.retries``). A step the run has already finished is not done again, so a
        retried task is harmless. After ``register`` the run has succeeded; before, it waits
        ``interrupted`` for the next task (see the module's docstring)."""
        check_run_id(run_id)
        reap_dead_runs(self.ws)
        record = self._exact_run(run_id)
        if record is None:
            if step is not _FIRST:
                raise PipelineError(f"run {run_id} does not exist, so it cannot run step "
                                    f"{step.value}: its first step ({_FIRST.value}) creates it")
            check_architecture_exists(self.ws.config.model.architecture, self.ws.root)
            try:
                self.ws.state.create_run(run_id, trigger, config_snapshot(self.ws.config),
                                         [s.value for s in Step], _stale_after(self.ws))
            except StoreError:  # another attempt created it in the meantime
                if self._exact_run(run_id) is None:
                    raise
                return self.run_step(run_id, step, trigger)
            return self._execute(self.ws, run_id, step, orchestrated=True)
        status = {s.name: s.status for s in record.steps}
        if status[step.value] is StepStatus.SUCCEEDED:
            # a retry after the upload of the step's files failed: upload them again
            run_dir = self.ws.artifacts / "runs" / run_id
            if run_dir.is_dir():
                self.ws.artifact_sync.publish(run_dir)
            return self._settle(record)
        if record.status is RunStatus.DISCARDED:
            raise PipelineError(f"run {run_id} was discarded; start a new run (another run id)")
        earlier = list(Step)[:list(Step).index(step)]
        missing = [s for s in earlier if status[s.value] is not StepStatus.SUCCEEDED]
        if missing:
            raise PipelineError(f"step {step.value} of run {run_id} needs step "
                                f"{missing[0].value} first: `medops run --only "
                                f"{missing[0].value} --run-id {run_id}`")
        if record.status is RunStatus.RUNNING:
            raise PipelineError(f"run {run_id} is running in another process (pid {record.pid} "
                                f"on {record.host}); try again when it has stopped")
        if not self.ws.state.take_run(run_id, record.status, stale_after=_stale_after(self.ws)):
            raise PipelineError(f"run {run_id} was taken by another process; try again")
        return self._execute(self._run_workspace(record), run_id, step, orchestrated=True)

    def _exact_run(self, run_id: str) -> RunRecord | None:
        """The run named ``run_id`` exactly (``get_run`` also takes the start of an id)."""
        try:
            record = self.ws.state.get_run(run_id)
        except NotFoundError:
            return None
        return record if record.id == run_id else None

    def _settle(self, record: RunRecord) -> RunRecord:
        """A run an orchestrator retries after its step succeeded: unchanged, unless every step
        has succeeded and the process that ran the last one died before saying so."""
        if record.status is not RunStatus.SUCCEEDED and record.status is not RunStatus.RUNNING \
                and all(s.status is StepStatus.SUCCEEDED for s in record.steps):
            self.ws.state.finish_run(record.id, RunStatus.SUCCEEDED)
            return self.ws.state.get_run(record.id)
        return record

    def _run_workspace(self, record: RunRecord) -> Workspace:
        """The workspace of an existing run: its own configuration, with where things live and
        run (storage, executor, retries) from the current medops.yaml."""
        current = self.ws.config.model_dump(mode="json")
        snapshot = parse_config({**record.config, **{k: current[k] for k in _ENVIRONMENT}},
                                origin=f"the configuration of run {record.id}")
        return self.ws if snapshot == self.ws.config else self.ws.with_config(snapshot)

    def _execute(self, ws: Workspace, run_id: str, until: Step | None,
                 orchestrated: bool = False) -> RunRecord:
        record = ws.state.get_run(run_id)
        ctx = RunContext(ws=ws, run_id=run_id, run_dir=ws.artifacts / "runs" / run_id,
                         reporter=self.reporter, interrupt=self.interrupt)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        done = {s.name: s for s in record.steps if s.status is StepStatus.SUCCEEDED}
        if record.mlflow_run_id:  # a resume: MLflow shows the run as ended until now
            mark_mlflow_run(ws, run_id, "RUNNING")
        # Liveness for every process and machine sharing the state: a run whose beats stop is
        # taken for dead. One this process lost (judged dead, taken over) stops at once.
        owner = process_owner()
        beat = Heartbeat(ws.state.runs, owner, ws.config.pipeline.heartbeat, run_id,
                         on_lost=lambda _: self.interrupt.request())
        beat.start()
        try:
            if done:  # a resume, maybe on another machine: its finished steps' files
                ws.artifact_sync.ensure_local(ctx.run_dir)
            for step in Step:
                self.interrupt.check()
                if step.value in done:
                    ctx.outputs[step.value] = done[step.value].outputs
                else:
                    ws.artifact_sync.publish(ctx.run_dir, strict=False)  # earlier steps' files
                    ctx.outputs[step.value] = self._run_step(ctx, step, orchestrated)
                if step is until:
                    break
            if orchestrated:  # the next task may run on another machine
                ws.artifact_sync.publish(ctx.run_dir)
        except StepFailedError as exc:
            beat.stop()
            ws.state.finish_run(run_id, RunStatus.FAILED, str(exc), owner=owner)
            mark_mlflow_run(ws, run_id, "FAILED")
            raise
        except BaseException:
            # Ctrl-C or a crash outside a step: leave the run resumable.
            beat.stop()
            ws.state.finish_run(run_id, RunStatus.INTERRUPTED, "interrupted", owner=owner)
            mark_mlflow_run(ws, run_id, "KILLED")
            raise
        beat.stop()
        if orchestrated and until is not _LAST:  # the next task of the orchestrator goes on
            assert until is not None
            following = list(Step)[list(Step).index(until) + 1]
            ws.state.finish_run(run_id, RunStatus.INTERRUPTED,
                                f"paused after {until.value}: the orchestrator runs the next "
                                f"step (medops run --only {following.value} --run-id {run_id})",
                                owner=owner)
            return ws.state.get_run(run_id)
        ws.state.finish_run(run_id, RunStatus.SUCCEEDED, owner=owner)
        if until is not None:  # it may have stopped before register, which ends the MLflow run
            mark_mlflow_run(ws, run_id, "FINISHED")
        return ws.state.get_run(run_id)

    def _run_step(self, ctx: RunContext, step: Step, once: bool = False) -> dict[str, Any]:
        """Run ``step`` with the configured retries (``once``: one attempt, the caller
        retries)."""
        state = ctx.ws.state
        retries = ctx.config.pipeline.retries
        prior = next(s for s in state.get_run(ctx.run_id).steps if s.name == step.value)
        attempt = prior.attempts
        ctx.step = step.value
        while True:
            attempt += 1
            started = datetime.now(timezone.utc)
            state.update_step(ctx.run_id, step.value, status=StepStatus.RUNNING,
                                      attempts=attempt, started_at=started, error=None)
            self.reporter.step_started(step.value, attempt)
            t0 = time.perf_counter()
            try:
                outputs = STEPS[step](ctx)
            except Exception as exc:
                if self.interrupt.requested or caused_by_interrupt(exc):
                    # The stop, disguised by a library: the step resumes, it has not failed.
                    raise KeyboardInterrupt from exc
                retry = not once and not isinstance(exc, _NOT_RETRIED) \
                    and attempt < retries.attempts
                text = f"{type(exc).__name__}: {exc}"
                state.update_step(
                    ctx.run_id, step.value, status=StepStatus.FAILED,
                    finished_at=datetime.now(timezone.utc),
                    error=text + "\n" + "".join(traceback.format_tb(exc.__traceback__)[-5:]))
                self.reporter.step_failed(step.value, text, attempt, retry)
                if not retry:
                    raise StepFailedError(step.value, attempt, exc) from exc
                time.sleep(retries.backoff_seconds * attempt)
                continue
            state.update_step(ctx.run_id, step.value, status=StepStatus.SUCCEEDED,
                                      finished_at=datetime.now(timezone.utc), outputs=outputs)
            self.reporter.step_finished(step.value, outputs, time.perf_counter() - t0)
            return outputs

