"""Starting a data-parallel training: N local worker processes, or the torchrun world this
process already belongs to.

A local launch spawns ``train.processes`` children (ranks 0..N-1) and stays their supervisor.
It uses ``multiprocessing``'s spawn start rather than torchrun's elastic agent: the agent
wants to own the process (it installs its own signal handlers, restarts failed workers and
reports only exit codes), while the caller here is a pipeline step that must keep its own
interrupt handling and hear from rank 0 after every epoch (to log to MLflow and to stop at a
Ctrl-C). Spawn, not fork: the parent holds threads, database connections and perhaps CUDA,
none of which survive a fork. Restarting is left to the pipeline (a retried step, or
``medops runs resume``), which continues from the last checkpoint.

The supervisor hosts the rendezvous store on a free loopback port (the OS picks it, so two
launches never race for one), hands the images to the children in shared memory, and then
waits on them. Rank 0 sends each finished epoch and waits for the go-ahead (so MLflow sees
epochs in order and an interrupt lands between epochs, after a checkpoint), and at the end
the weights. A child that dies (kill -9, the OOM killer) or fails stops the others, and the
step fails with a :class:`~medops.errors.TrainingError` naming the rank; an interrupt of the
parent stops the children too (SIGTERM, then SIGKILL after :data:`STOP_GRACE_SECONDS`).
Children ignore SIGINT, which a Ctrl-C sends to the whole process group, and leave if the
parent disappears.
"""

from __future__ import annotations

import io
import logging
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as torch_mp  # registers the shared-memory pickling of tensors

from medops.config.schema import ModelConfig, TrainConfig
from medops.errors import MedopsError, TrainingError
from medops.train import distributed
from medops.train.architectures import build_model
from medops.train.ddp import check_enough_images, train_rank
from medops.train.results import ArrayData, EpochResult, TrainJob, TrainResult
from medops.train.spec import ModelSpec

log = logging.getLogger(__name__)

#: How long stopped children get to finish the checkpoint they are writing before SIGKILL.
STOP_GRACE_SECONDS = 20.0
#: After the first failure, how long to listen for others: the one that explains it may come
#: a moment later (a killed rank's peers report a broken connection first, sometimes).
_SETTLE_SECONDS = 1.0


def train_data_parallel(
    job: TrainJob,
    device: torch.device,
    *,
    on_epoch: Callable[[EpochResult], None] | None,
    progress: bool,
) -> TrainResult:
    """Train ``job`` on several processes: the torchrun world this process is rank 0 of, or
    ``job.cfg.processes`` local ones."""
    world = distributed.attached()
    check_enough_images(len(job.train), job.cfg.processes if world is None else world.world)
    if world is not None:
        from medops.train.torchrun import lead_training

        return lead_training(job, device, on_epoch=on_epoch, progress=progress)
    return LocalLaunch(job, device).train(on_epoch=on_epoch, progress=progress)


@dataclass(frozen=True)
class _SharedJob:
    """A :class:`TrainJob` whose images travel in shared memory (tensors pickle as handles)."""

    spec: ModelSpec
    cfg: TrainConfig
    model_cfg: ModelConfig
    checkpoint_dir: Path
    arrays: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

    @classmethod
    def of(cls, job: TrainJob) -> _SharedJob:
        tx, ty, vx, vy = (torch.from_numpy(np.ascontiguousarray(a)).share_memory_()
                          for a in (job.train.x, job.train.y, job.val.x, job.val.y))
        arrays = (tx, ty, vx, vy)
        return cls(job.spec, job.cfg, job.model_cfg, job.checkpoint_dir, arrays)

    def job(self) -> TrainJob:
        tx, ty, vx, vy = (a.numpy() for a in self.arrays)
        return TrainJob(self.spec, ArrayData(tx, ty), ArrayData(vx, vy), self.cfg,
                        self.model_cfg, self.checkpoint_dir)


@dataclass(frozen=True)
class _Failure:
    """Why a child stopped: the exception it reported (``at``: when it was raised), or how its
    process ended."""

    rank: int
    text: str
    error: BaseException | None = None
    child_traceback: str = ""
    at: float = 0.0
    signalled: bool = False

    def blame(self) -> tuple[int, float]:
        """Lower is likelier the cause: a medops error; a process killed from outside; then
        errors in the order they were raised (a rank's own failure comes before its peers'
        broken connections); last a process that exited without a word."""
        if isinstance(self.error, MedopsError):
            return 0, self.at
        if self.error is None:
            return (1 if self.signalled else 3), 0.0
        return 2, self.at


class LocalLaunch:
    """``job.cfg.processes`` ranks on this machine, supervised by this process."""

    def __init__(self, job: TrainJob, device: torch.device) -> None:
        self.job = job
        self.world = job.cfg.processes
        for rank in range(self.world):  # fails here, before anything starts, without GPUs
            distributed.rank_device(device, rank, self.world)
        self.device_type = device.type
        cores = os.cpu_count() or 1
        # N processes on C cores must not start C threads each
        self.threads = job.cfg.num_threads or max(1, cores // self.world)

    def train(self, *, on_epoch: Callable[[EpochResult], None] | None,
              progress: bool) -> TrainResult:
        store = dist.TCPStore(distributed.LOCAL_ADDRESS, 0, is_master=True,
                              wait_for_workers=False, timeout=distributed.COLLECTIVE_TIMEOUT)
        shared = _SharedJob.of(self.job)
        ctx = torch_mp.get_context("spawn")
        procs: list[Any] = []
        conns: list[multiprocessing.connection.Connection] = []
        try:
            for rank in range(self.world):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=_child_main, name=f"medops-train-rank{rank}", daemon=True,
                    args=(rank, self.world, store.port, self.device_type, shared, theirs,
                          self.threads, progress, os.getpid()),
                )
                proc.start()
                theirs.close()
                procs.append(proc)
                conns.append(mine)
            log.info("training on %d processes (%s), pids %s", self.world,
                     distributed.backend_for(torch.device(self.device_type)),
                     [p.pid for p in procs])
            result = self._supervise(procs, conns, on_epoch)
            for proc in procs:  # they leave the process group and exit by themselves
                proc.join(STOP_GRACE_SECONDS)
            return result
        finally:
            _stop(procs)
            for conn in conns:
                conn.close()

    def _supervise(self, procs: list[Any], conns: list[multiprocessing.connection.Connection],
                   on_epoch: Callable[[EpochResult], None] | None) -> TrainResult:
        """Relay rank 0's epochs to ``on_epoch`` until it sends the result; raise when a child
        fails or dies first."""
        listening = {conn: rank for rank, conn in enumerate(conns)}
        running: dict[int, int] = {proc.sentinel: rank for rank, proc in enumerate(procs)}
        failures: list[_Failure] = []
        settled: float | None = None  # when to stop listening for more failures
        while listening or running:
            timeout = None if settled is None else settled - time.monotonic()
            if timeout is not None and timeout <= 0:
                break
            ready = multiprocessing.connection.wait([*listening, *running], timeout)
            for conn in [c for c in listening if c in ready]:
                try:
                    kind, payload = conn.recv()
                except (EOFError, OSError):  # its process is gone: its sentinel says how
                    del listening[conn]
                    continue
                if kind == "done":
                    return self._result(payload)
                if kind == "error":
                    failures.append(_failure(listening[conn], payload))
                elif not failures:  # an epoch
                    if on_epoch is not None:
                        on_epoch(payload)
                    conn.send("go")
            for sentinel in [r for r in running if r in ready]:
                rank = running.pop(sentinel)
                procs[rank].join(5.0)  # its sentinel closes a moment before it can be reaped
                code = procs[rank].exitcode
                # ranks other than 0 end by themselves once they are done; one that reported
                # its error has said why it ended
                if code != 0 and all(f.rank != rank for f in failures):
                    failures.append(_Failure(rank, _ended(code), signalled=(code or 0) < 0))
            if failures and settled is None:
                settled = time.monotonic() + _SETTLE_SECONDS
        raise self._error(failures)

    def _error(self, failures: list[_Failure]) -> BaseException:
        if not failures:
            return TrainingError("the training processes ended without a result; see the "
                                 "log above for what they printed")
        first = min(failures, key=_Failure.blame)
        if first.child_traceback:
            log.warning("training process %d failed:\n%s", first.rank, first.child_traceback)
        if isinstance(first.error, MedopsError):
            return first.error
        return TrainingError(
            f"training process {first.rank} of {self.world} {first.text}; the other processes "
            f"were stopped. The checkpoint in {self.job.checkpoint_dir} keeps the last finished "
            "epoch: resume the run (`medops runs resume RUN_ID`) to continue from it"
        )

    def _result(self, payload: tuple[dict[str, Any], bytes]) -> TrainResult:
        summary, weights = payload
        model = build_model(self.job.spec)
        model.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu",
                                         weights_only=True))
        model.eval()
        return TrainResult(model=model, **summary)


def _failure(rank: int, payload: tuple[bytes | None, str, str, float]) -> _Failure:
    pickled, text, tb, at = payload
    error: BaseException | None = None
    if pickled is not None:
        try:
            error = pickle.loads(pickled)
        except Exception:  # an exception class that cannot be rebuilt here: its text will do
            error = None
    return _Failure(rank, f"failed: {text}", error or RuntimeError(text), tb, at)


def _ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name}"
    return f"exited with status {exitcode} without reporting an error"


def _stop(procs: list[Any]) -> None:
    """SIGTERM to the children still running, SIGKILL to those still running after the grace."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()


# -- in the child -------------------------------------------------------------------------


def _child_main(rank: int, world: int, port: int, device_type: str, shared: _SharedJob,
                conn: multiprocessing.connection.Connection, threads: int, progress: bool,
                parent: int) -> None:
    """Rank ``rank``'s process: join the group, train, report to the parent (rank 0)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what a Ctrl-C stops
    signal.signal(signal.SIGTERM, _exit_on_signal)  # unwinding finishes a checkpoint write
    _leave_with_parent(parent)
    os.environ.update(distributed.local_env(rank, world, port))
    torch.set_num_threads(threads)
    try:
        device = distributed.rank_device(torch.device(device_type), rank, world)
        member = distributed.Member(rank, world, rank, device)
        store = dist.TCPStore(distributed.LOCAL_ADDRESS, port, is_master=False,
                              timeout=distributed.COLLECTIVE_TIMEOUT)
        distributed.join_default_group(member, store)
        result = train_rank(shared.job(), member,
                            on_epoch=_reporter(conn) if member.lead else None,
                            progress=progress)
        if member.lead:
            conn.send(("done", _summary(result)))
    except Exception as exc:
        conn.send(("error", (_pickled(exc), f"{type(exc).__name__}: {exc}",
                             traceback.format_exc(), time.time())))
        sys.exit(1)
    finally:
        distributed.leave_default_group()


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _leave_with_parent(parent: int) -> None:
    """Exit if the parent dies (kill -9): its children would otherwise train on, unwatched,
    until the next epoch report found nobody listening."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(70)

    threading.Thread(target=watch, name="medops-parent-watch", daemon=True).start()


def _reporter(conn: multiprocessing.connection.Connection) -> Callable[[EpochResult], None]:
    def report(result: EpochResult) -> None:
        conn.send(("epoch", result))
        conn.recv()  # the parent logged it; an interrupt arrives as SIGTERM instead

    return report


def _summary(result: TrainResult) -> tuple[dict[str, Any], bytes]:
    buffer = io.BytesIO()
    torch.save(result.model.state_dict(), buffer)
    summary = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "model"}
    return summary, buffer.getvalue()


def _pickled(exc: BaseException) -> bytes | None:
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)  # some exception classes pickle but cannot be rebuilt
    except Exception:
        return None
    return data
