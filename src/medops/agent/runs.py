"""Pipeline runs in a child process, so the agent keeps consuming events during a run and a
SIGTERM can interrupt a step at once (the trainer checkpoints every epoch; the run resumes).

Children come from a forkserver that has imported the pipeline (torch included) once, so a run
starts in tens of milliseconds instead of seconds. A child watches its parent: when the agent
dies, even by SIGKILL, the child kills itself too, leaving its run ``running`` under a dead pid,
which the next agent (on this machine at once, on another once its heartbeat is stale) marks
interrupted and resumes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from medops.storage.liveness import pid_alive

if TYPE_CHECKING:  # forkserver exists on POSIX only
    from multiprocessing.context import ForkServerContext, SpawnContext

    RunContext = ForkServerContext | SpawnContext

log = logging.getLogger(__name__)

# Imported once in the forkserver: everything a run needs, so children start warm.
_PRELOAD = ["medops.project", "medops.pipeline"]
EXIT_OK, EXIT_STEP_FAILED, EXIT_ERROR, EXIT_NOT_OURS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def run_context() -> RunContext:
    """forkserver with the pipeline preloaded where there is one (Linux, macOS), else spawn."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")


def warm_up(ctx: RunContext) -> None:
    """Start the forkserver (and its imports) now rather than at the first run."""
    proc = ctx.Process(target=_noop, name="medops-warm-up")
    proc.start()
    proc.join()


def _noop() -> None:
    pass


class RunProcess:
    """One run executing in a child process."""

    def __init__(self, ctx: RunContext, workspace: Any, run_id: str, log_level: int,
                 owner: str) -> None:
        """``owner``: the agent's owner string (it holds ``run_id`` until the child takes it)."""
        self.run_id = run_id
        self._proc: BaseProcess = ctx.Process(
            target=execute_run, args=(workspace, run_id, os.getpid(), log_level, owner),
            name=f"medops-run-{run_id}", daemon=False)
        self._starter = threading.Thread(target=self._proc.start, name=f"start-{run_id}",
                                         daemon=True)

    def start(self) -> None:
        # Start from a helper thread: while the forkserver is still importing (right after the
        # agent started) start() blocks, and the loop must keep deciding and hear SIGTERM.
        self._starter.start()

    @property
    def alive(self) -> bool:
        return self._starter.is_alive() or self._proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    def stop(self, timeout: float) -> bool:
        """Interrupt the run (its step stops, the run is marked interrupted); SIGKILL after
        ``timeout`` seconds. True if it stopped by itself."""
        self._starter.join(timeout)
        if self._starter.is_alive():  # still starting: it dies with the agent, and resumes
            return False
        if self._proc.pid is not None and self._proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGINT)
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
            return False
        return True


def execute_run(workspace: Any, run_id: str, agent_pid: int, log_level: int,
                agent_owner: str) -> None:
    """The child: execute ``run_id`` on a fresh workspace (its own DB connections), if the
    agent that launched it (``agent_owner``) still holds it."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(name)s: %(message)s")
    _exit_with_agent(agent_pid)
    from medops.errors import MedopsError, StepFailedError
    from medops.pipeline import Interrupt, PipelineRunner
    from medops.storage import RunStatus
    from medops.storage.liveness import STALE_BEATS

    interrupt = Interrupt()
    interrupt.install()  # never restored: a stopping run's process exits
    # Compare-and-set: a child whose agent died before it started (its forkserver was still
    # importing) finds the run taken by the next agent, and leaves it alone.
    stale_after = workspace.config.pipeline.heartbeat * STALE_BEATS
    if not workspace.state.take_run(run_id, RunStatus.RUNNING, owner=agent_owner,
                                    stale_after=stale_after):
        log.warning("run %s is no longer held by agent %d; not starting it", run_id, agent_pid)
        sys.exit(EXIT_NOT_OURS)
    try:
        record = PipelineRunner(workspace, _LogReporter(run_id), interrupt).start(run_id)
    except StepFailedError as exc:
        log.warning("run %s failed: step %s", run_id, exc.step)
        sys.exit(EXIT_STEP_FAILED)
    except KeyboardInterrupt:
        log.info("run %s interrupted; it resumes when the agent starts again", run_id)
        sys.exit(EXIT_INTERRUPTED)
    except MedopsError as exc:
        log.error("run %s stopped: %s", run_id, type(exc).__name__)
        sys.exit(EXIT_ERROR)
    log.info("run %s %s", run_id, record.status.value)


def _exit_with_agent(agent_pid: int) -> None:
    """Die (like SIGKILL) as soon as the agent is gone, leaving the run to the next agent."""
    parent = os.getppid()

    def gone() -> bool:
        return os.getppid() != parent or not pid_alive(agent_pid)

    if gone():
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(0.2)
            if gone():
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="agent-watch", daemon=True).start()


class _LogReporter:
    """Step starts and ends in the agent's log (ids and timings only: no PHI)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def step_started(self, step: str, attempt: int) -> None:
        log.info("run %s: %s started (attempt %d)", self.run_id, step, attempt)

    def step_finished(self, step: str, outputs: dict[str, Any], seconds: float) -> None:
        log.info("run %s: %s finished in %.1fs", self.run_id, step, seconds)

    def step_failed(self, step: str, error: str, attempt: int, will_retry: bool) -> None:
        log.warning("run %s: %s failed (attempt %d%s)", self.run_id, step, attempt,
                    ", retrying" if will_retry else "")

    def progress(self, step: str, done: int, total: int) -> None:
        pass

    def message(self, step: str, text: str) -> None:
        pass
