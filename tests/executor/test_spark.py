"""The Spark executor on a real ``local[2]`` Spark: order, streaming, errors, cancellation.

One Spark context serves the module (its start costs seconds); the first test starts and stops
its own to check what a configuration puts into a fresh context. The standalone cluster and
the pipeline run on Spark are in test_spark_pipeline.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Generator, Iterator
from concurrent.futures import BrokenExecutor
from pathlib import Path

import pytest

from medops.config.schema import ExecutorConfig
from medops.errors import ConfigError, DependencyMissingError, UnavailableError, exit_code_for
from medops.executor import make_executor
from tests.executor.spark_work import (
    crash_on_five,
    fail_on_three,
    nap,
    raise_unpicklable,
    square,
    worker_setup,
)
from tests.spark_cluster import missing_reason

if (_reason := missing_reason()) is not None:
    if os.environ.get("CI"):
        pytest.fail(f"{_reason}; the dev extra and a JDK are required in CI",
                    pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

from medops.executor.spark import SparkExecutor, SparkJobError
from medops.executor.spark_session import JavaMissingError
from medops.executor.spark_tasks import TaskFailedError


def _active_jobs(executor: SparkExecutor) -> list[int]:
    return list(executor.session.sparkContext.statusTracker().getActiveJobsIds())


def _wait_until(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def test_a_configured_executor_starts_and_stops_its_own_session() -> None:
    from pyspark import SparkContext

    # As medops.yaml gives it: YAML numbers and booleans become Spark's strings.
    cfg = ExecutorConfig.model_validate({
        "kind": "spark", "master": "local[2]", "workers": 3,
        "conf": {"spark.medops.marker": "from-medops-yaml", "spark.task.maxFailures": 2,
                 "spark.sql.execution.arrow.pyspark.fallback.enabled": False}})
    with make_executor(cfg) as executor:
        assert isinstance(executor, SparkExecutor)
        assert SparkContext._active_spark_context is None  # nothing starts before first use
        sc = executor.session.sparkContext
        assert sc.master == "local[2]"
        assert sc.getConf().get("spark.medops.marker") == "from-medops-yaml"
        assert sc.getConf().get("spark.task.maxFailures") == "2"
        assert sc.getConf().get("spark.sql.execution.arrow.pyspark.fallback.enabled") == "false"
        assert sc.defaultParallelism == 3 == executor.workers  # executor.workers
        assert sc.uiWebUrl is None  # no web UI unless conf asks for one
        # The workers run this interpreter, bound to loopback for a local master.
        assert set(executor.map(worker_setup, range(4))) == {(sys.executable, "127.0.0.1")}
    assert SparkContext._active_spark_context is None  # close() stopped what it started


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkExecutor]:
    with SparkExecutor("local[2]") as executor:
        yield executor


def test_results_in_order_and_errors_keep_their_type(spark: SparkExecutor) -> None:
    items = list(range(101))
    assert list(spark.map(square, items)) == [x * x for x in items]
    assert list(spark.map(square, items, chunksize=7)) == [x * x for x in items]
    assert list(spark.map(square, items, chunksize=1000)) == [x * x for x in items]
    assert spark.last_map is not None and spark.last_map.partitions == 1
    assert list(spark.map(square, [])) == []
    with pytest.raises(ValueError, match="three") as info:
        list(spark.map(fail_on_three, range(6)))
    # The worker's traceback comes along as the cause.
    cause = str(info.value.__cause__)
    assert "on item 3" in cause and "fail_on_three" in cause
    # An exception that cannot travel back still tells what it was.
    with pytest.raises(TaskFailedError, match=r"UnpicklableError.*holds a lock"):
        list(spark.map(raise_unpicklable, [1]))
    with pytest.raises(ValueError, match="chunksize must be at least 1"):
        spark.map(square, items, chunksize=0)


def test_results_stream_while_the_job_runs(spark: SparkExecutor) -> None:
    list(spark.map(nap, [0.0] * 8))  # the Python workers are up: only the work is timed
    started = time.monotonic()
    results = spark.map(nap, [0.25] * 32)  # 8 partitions of 4 items, 1 s each
    first = next(results)
    first_at = time.monotonic() - started
    assert _wait_until(lambda: (p := spark.progress()) is not None and p.running_tasks > 0)
    progress = spark.progress()
    assert progress is not None and progress.partitions == 8 and 1 <= progress.done < 8
    assert "map nap over 32 item(s)" in str(progress)
    # The cores keep working while the caller is busy elsewhere: the rest is ready after.
    time.sleep(max(0.0, 5 * first_at + 1 - (time.monotonic() - started)))  # all done by then
    drain = time.monotonic()
    pids = {first, *results}
    assert time.monotonic() - drain < first_at  # less than one partition's time to drain
    assert len(pids) == 2  # both cores worked
    assert spark.progress() is None
    assert spark.last_map is not None and spark.last_map.done == 8


def test_closing_the_results_early_cancels_the_jobs(spark: SparkExecutor) -> None:
    results = spark.map(nap, [0.5] * 40, chunksize=2)
    next(results)
    assert isinstance(results, Generator)
    results.close()  # what a caller that stops iterating (or raises) does
    assert _wait_until(lambda: not _active_jobs(spark))
    assert list(spark.map(square, [1, 2, 3])) == [1, 4, 9]


def test_ctrl_c_cancels_the_spark_job(spark: SparkExecutor) -> None:
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            list(spark.map(nap, [1.0] * 200, chunksize=5))  # 100 s if not cancelled
    finally:
        timer.cancel()
    assert time.monotonic() - started < 10
    assert _wait_until(lambda: not _active_jobs(spark))
    assert list(spark.map(square, [4])) == [16]


def test_a_crashed_worker_is_a_broken_executor(spark: SparkExecutor) -> None:
    with pytest.raises(SparkJobError, match=r"partition .* failed.*Python worker") as info:
        list(spark.map(crash_on_five, range(20), chunksize=2))
    # The local pool's callers handle it as a crashed pool (preprocessing: a resumable error).
    assert isinstance(info.value, BrokenExecutor)
    assert list(spark.map(square, [3])) == [9]  # the context survives


def test_a_master_that_does_not_answer_fails_fast(spark: SparkExecutor) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"spark://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(UnavailableError, match=f"the Spark master {url} does not answer"):
        _ = SparkExecutor(url).session
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("master", "message"), [
    ("local[x]", "unknown executor.master 'local\\[x\\]'; expected local, local\\[N\\]"),
    ("spark://nohost", "'nohost' is not HOST:PORT"),
    ("sc://host:15002", "Spark Connect URL"),
    ("mesos://host:5050", "unknown executor.master"),
])
def test_bad_masters_are_config_errors(master: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_executor(ExecutorConfig(kind="spark", master=master))


def test_settings_that_cannot_work(spark: SparkExecutor, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        SparkExecutor("local[2]", parallelism=0)
    with pytest.raises(ConfigError, match=r"executor.conf: spark.medops.executorTimeout must be "
                                          r"a number of seconds above 0 \(got 'soon'\)"):
        SparkExecutor("local[2]", {"spark.medops.executorTimeout": "soon"})
    # One Spark context per process: another master cannot start next to it.
    with pytest.raises(ConfigError, match="master 'local\\[2\\]' already runs"):
        _ = SparkExecutor("local[1]").session
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    monkeypatch.delenv("YARN_CONF_DIR", raising=False)
    with pytest.raises(ConfigError, match="HADOOP_CONF_DIR or YARN_CONF_DIR"):
        _ = SparkExecutor("yarn").session
    closed = SparkExecutor("local[2]")
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.map(square, [1])


def test_missing_java_or_pyspark_names_the_fix(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    with pytest.raises(JavaMissingError, match=r"no `java` on PATH and no JAVA_HOME.*fix: "
                                               r"install a JDK 17") as info:
        _ = SparkExecutor("local[2]").session
    assert exit_code_for(info.value) == exit_code_for(DependencyMissingError("x"))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))  # Spark's launcher would run its bin/java
    with pytest.raises(JavaMissingError, match=f"JAVA_HOME={tmp_path} has no bin/java"):
        _ = SparkExecutor("local[2]").session
    monkeypatch.setitem(sys.modules, "pyspark", None)  # as if not installed
    with pytest.raises(DependencyMissingError, match=r"pip install 'medops\[spark\]'"):
        _ = SparkExecutor("local[2]").session


def test_a_java_that_cannot_start_spark_is_named(tmp_path: Path) -> None:
    # A fresh process: this one's JVM is running, and Spark never launches a second.
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("#!/bin/sh\necho 'UnsupportedClassVersionError: class file version 61' >&2\n"
                    "exit 1\n")
    java.chmod(0o755)
    code = ("from medops.executor.spark import SparkExecutor\n"
            "SparkExecutor('local[1]').session\n")
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "jdk")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert f"JavaMissingError: Spark's JVM did not start with {java}" in done.stderr
    assert "UnsupportedClassVersionError" in done.stderr  # the JVM's own words, shown above
    assert "fix: install a JDK 17" in done.stderr
