"""How many threads a worker's libraries start: as many as the cores the worker was given.

A pool of N workers on N cores (the process pool, a Spark executor's task slots) gets its
parallelism from the processes; if each worker's OpenMP, BLAS and torch also started a thread
per core, N x N threads would contend for N cores.
"""

from __future__ import annotations

import os
import sys

# Thread-count knobs of BLAS/OpenMP libraries; read when they are imported in the worker.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def limit_threads(n: int = 1) -> None:
    """Run this process's numeric libraries on ``n`` threads: those imported later through the
    environment, those already loaded through torch and threadpoolctl."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # optional: only needed for pools already loaded
        return
    threadpool_limits(n)


def limit_spark_task_threads() -> None:
    """:func:`limit_threads` to the cores of the running Spark task (``spark.task.cpus``), once
    per Python worker: Spark reuses its workers, and sets no limit itself in local mode or
    where ``spark.executor.cores`` is unset."""
    cpus = _spark_task_cpus()
    if os.environ.get("MEDOPS_TASK_THREADS") != str(cpus):
        limit_threads(cpus)
        os.environ["MEDOPS_TASK_THREADS"] = str(cpus)


def _spark_task_cpus() -> int:
    from pyspark import TaskContext

    context = TaskContext.get()
    return max(1, int(context.cpus())) if context is not None else 1
