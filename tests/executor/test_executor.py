"""Executors: ordering, errors, worker set-up and selection by configuration."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from medops.config.schema import ExecutorConfig
from medops.errors import ConfigError
from medops.executor import Executor, LocalExecutor, SerialExecutor, make_executor


def square(x: int) -> int:
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


def worker_env(_: int) -> tuple[int, str | None]:
    return os.getpid(), os.environ.get("OMP_NUM_THREADS")


@pytest.mark.parametrize("make", [SerialExecutor, lambda: LocalExecutor(workers=2)])
def test_results_in_order_and_errors_propagate(make: Callable[[], Executor]) -> None:
    with make() as ex:
        items = list(range(101))
        assert list(ex.map(square, items)) == [x * x for x in items]
        assert list(ex.map(square, items, chunksize=7)) == [x * x for x in items]
        assert list(ex.map(square, [])) == []
        with pytest.raises(ValueError, match="three"):
            list(ex.map(fail_on_three, range(6)))


def test_local_workers_are_separate_and_single_threaded() -> None:
    with LocalExecutor(workers=2) as ex:
        results = list(ex.map(worker_env, range(40), chunksize=1))
        assert ex.start_method in ("fork", "forkserver")
    assert {pid for pid, _ in results} - {os.getpid()}  # ran elsewhere
    assert {threads for _, threads in results} == {"1"}
    with pytest.raises(RuntimeError, match="closed"):
        list(ex.map(square, [1]))


def test_forkserver_start_method() -> None:
    with LocalExecutor(workers=1, start_method="forkserver") as ex:
        assert list(ex.map(square, [2, 3])) == [4, 9]
        assert ex.start_method == "forkserver"


def test_make_executor_by_kind() -> None:
    with make_executor(ExecutorConfig(kind="serial")) as ex:
        assert isinstance(ex, SerialExecutor)
    with make_executor(ExecutorConfig(kind="local", workers=3)) as ex:
        assert isinstance(ex, LocalExecutor) and ex.workers == 3
    with make_executor(ExecutorConfig()) as ex:
        assert isinstance(ex, LocalExecutor) and ex.workers == (os.cpu_count() or 1)
    # As a future config could hold: past validation, so past the type checker too.
    unknown = ExecutorConfig.model_construct(kind="cluster")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"unknown executor\.kind 'cluster'; known kinds: local"):
        make_executor(unknown)
    with pytest.raises(ConfigError, match="at least 1"):
        LocalExecutor(workers=0)
