"""The local executor: a process pool on this machine, one worker per core by default.

Start method, measured on 2 cores with medops' image stack loaded in the parent:

==================  ==================================  =====================================
method              first ``map`` ready after            safe when the parent ...
==================  ==================================  =====================================
fork                0.03 s                               has no OpenMP/torch pools, no threads
forkserver+preload  0.7-1.4 s (one import of the stack)  always
spawn               1.2-2.5 s (every worker imports)     always
==================  ==================================  =====================================

fork is unsafe once torch (or another OpenMP runtime) has run a parallel op in the parent:
workers that use torch then hang (reproduced: a matmul in the parent, then a matmul in a
forked worker never returns). ``start_method="auto"`` therefore forks only while no such
runtime or extra Python thread exists (and only before Python 3.12, which warns about fork
in any multi-threaded process), and otherwise uses forkserver, preloading the mapped
function's module so that the heavy imports happen once rather than in every worker.
"""

from __future__ import annotations

import functools
import math
import multiprocessing as mp
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Literal, TypeVar

from medops.errors import ConfigError
from medops.executor.base import Executor
from medops.executor.threads import limit_threads

T = TypeVar("T")
R = TypeVar("R")

StartMethod = Literal["auto", "fork", "forkserver", "spawn"]

# Runtimes whose thread pools or background threads do not survive fork().
_FORK_UNSAFE_MODULES = ("torch", "tensorflow", "jax", "sklearn", "mlflow", "cv2")
# A worker gets ~16 chunks over a job: small enough that the last chunks balance out, large
# enough that the ~0.2 ms of per-chunk IPC stays negligible.
_CHUNKS_PER_WORKER = 16
_MAX_CHUNKSIZE = 16


class LocalExecutor(Executor):
    """A pool of ``workers`` processes (default: one per CPU), started on the first ``map``
    and reused until :meth:`close`. Each worker runs its libraries single-threaded, since
    the parallelism comes from the processes."""

    def __init__(self, workers: int | None = None, *, start_method: StartMethod = "auto") -> None:
        if workers is not None and workers < 1:
            raise ConfigError(f"executor.workers must be at least 1 (got {workers})")
        if start_method not in ("auto", "fork", "forkserver", "spawn"):
            raise ConfigError(
                f"unknown start method {start_method!r}; known: auto, fork, forkserver, spawn"
            )
        self.workers = workers or os.cpu_count() or 1
        self._start_method = start_method
        self._resolved_method: str | None = None
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    @property
    def start_method(self) -> str | None:
        """The start method in use once the pool runs (``auto`` resolved), else None."""
        return self._resolved_method

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, chunksize: int | None = None
    ) -> Iterator[R]:
        if not items:
            return iter(())
        pool = self._ensure_pool(fn)
        if chunksize is None:
            per_chunk = len(items) / (self.workers * _CHUNKS_PER_WORKER)
            chunksize = max(1, min(_MAX_CHUNKSIZE, math.ceil(per_chunk)))
        return pool.map(fn, items, chunksize=chunksize)

    def close(self) -> None:
        """Stop the workers (waiting for running work) and refuse further maps."""
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _ensure_pool(self, fn: Callable[..., Any]) -> ProcessPoolExecutor:
        if self._closed:
            raise RuntimeError("this LocalExecutor has been closed")
        if self._pool is None:
            method = self._start_method
            if method == "auto":
                method = "fork" if _fork_is_safe() else "forkserver"
            ctx = mp.get_context(method)
            self._resolved_method = method
            if method == "forkserver":
                # Only takes effect if this process has not started its forkserver yet;
                # otherwise the workers import the module on first use, which is merely slower.
                ctx.set_forkserver_preload(_modules_of(fn))
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=ctx, initializer=_init_worker
            )
        return self._pool


def _fork_is_safe() -> bool:
    if "fork" not in mp.get_all_start_methods() or sys.version_info >= (3, 12):
        return False
    if threading.active_count() > 1:
        return False
    return not any(name in sys.modules for name in _FORK_UNSAFE_MODULES)


def _modules_of(fn: Callable[..., Any]) -> list[str]:
    """The module defining ``fn`` (seeing through functools.partial), for forkserver preload."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = getattr(fn, "__module__", None)
    return [module] if module and module != "__main__" else []


def _init_worker() -> None:
    """Make every library in the worker single-threaded: N workers on N cores must not each
    start N threads."""
    limit_threads(1)
