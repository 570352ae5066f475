"""Runs the pipeline: each step recorded, retried per config, and resumable after a crash."""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from medops.config import parse_config
from medops.config.enums import Step
from medops.config.redact import config_snapshot
from medops.errors import ConfigError, DataError, PipelineError, StepFailedError
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

# Errors that retrying cannot fix: bad data or configuration fail the step at once.
_NOT_RETRIED = (DataError, ConfigError)
# Sections a resumed run takes from the current medops.yaml rather than from its snapshot
# (which holds notification URLs masked: they are credentials).
_ENVIRONMENT = ("storage", "executor", "pipeline", "notify")


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
        record = self.ws.state.get_run(run_id)
        current = self.ws.config.model_dump(mode="json")
        snapshot = parse_config({**record.config, **{k: current[k] for k in _ENVIRONMENT}},
                                origin=f"the configuration of run {record.id}")
        ws = self.ws if snapshot == self.ws.config else self.ws.with_config(snapshot)
        return self._execute(ws, run_id, until)

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
        current = self.ws.config.model_dump(mode="json")
        snapshot = parse_config({**record.config, **{k: current[k] for k in _ENVIRONMENT}},
                                origin=f"the configuration of run {record.id}")
        self.ws.state.claim_run(record.id, _stale_after(self.ws))
        ws = self.ws if snapshot == self.ws.config else self.ws.with_config(snapshot)
        return self._execute(ws, record.id, until)

    def _execute(self, ws: Workspace, run_id: str, until: Step | None) -> RunRecord:
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
                    ctx.outputs[step.value] = self._run_step(ctx, step)
                if step is until:
                    break
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
        ws.state.finish_run(run_id, RunStatus.SUCCEEDED, owner=owner)
        if until is not None:  # it may have stopped before register, which ends the MLflow run
            mark_mlflow_run(ws, run_id, "FINISHED")
        return ws.state.get_run(run_id)

    def _run_step(self, ctx: RunContext, step: Step) -> dict[str, Any]:
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
                retry = not isinstance(exc, _NOT_RETRIED) and attempt < retries.attempts
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

