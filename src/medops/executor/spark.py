"""The Spark executor: map work on a Spark cluster, from ``local[*]`` to YARN and Kubernetes.

The driver is the process that calls :meth:`SparkExecutor.map` (``medops run`` itself; no
``spark-submit``). A map becomes a DataFrame of small rows (the item's position and the pickled
item: paths, frame numbers, hashes; never pixel bytes), split in order into partitions sized
for the work, and ``mapInPandas`` runs the function over each partition in Spark's Python
workers (:mod:`medops.executor.spark_tasks`). What the function produces it writes itself, from
the worker (preprocessed arrays into the cache); only its small return values come back, in
item order, partition by partition, so a caller's progress moves while the map runs.

Why one Spark job per partition: ``toLocalIterator`` streams in order but computes at most two
partitions at a time, and ``collect`` uses every core but returns only at the end. A fixed set
of driver threads (about two per core) each runs one single-partition job at a time, taking the
partitions in order: every core busy, whatever the caller's pace, and results yielded as soon
as the partitions before them are done. All of a map's jobs share one job group, which is what
the status tracker reports on and what Ctrl-C cancels.

An exception raised by ``fn`` is caught in the worker, sent back and raised again in the driver
with the worker's traceback as its cause, so it keeps its type, and Spark does not retry a task
that would fail the same way. A task lost with its executor (a worker killed, a node gone) is
rerun by Spark up to ``spark.task.maxFailures``, and since a partition is the same items on
every attempt its results arrive exactly once. Anything that fails a job for good raises
:class:`SparkJobError`.
"""

from __future__ import annotations

import itertools
import logging
import math
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from medops.errors import ConfigError, PipelineError, UnavailableError
from medops.executor.base import Executor
from medops.executor.spark_session import LOCAL_MASTERS, check_master, start_session
from medops.executor.spark_tasks import (
    ITEM_SCHEMA,
    RESULT_SCHEMA,
    PartitionTask,
    rebuild,
    rows_of,
)

if TYPE_CHECKING:
    from pyspark import RDD, SparkContext
    from pyspark.sql import SparkSession

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

# A core gets ~4 partitions over a map: the last ones balance out, progress moves in steps of
# a quarter of a core's share, and the fixed cost of a single-partition job stays small next to
# the partition's work. That cost is three Python hand-offs per task (building the rows,
# mapInPandas, returning them): 0.28 s per job run alone on 2 shared cores (a plain RDD job:
# 0.12 s; the tasks of one big mapInPandas job cost about as much each). Preprocessing 2,000
# files on local[2] ran at 0.9-1.15x the process pool's images/s with 4 partitions per core, the
# same within noise with 1 or 2. A caller's chunksize is a minimum, and so is _MIN_CHUNKSIZE: a
# map of 16 items is 4 jobs, not 16.
_PARTITIONS_PER_CORE = 4
_MIN_CHUNKSIZE = 4
_MAX_CHUNKSIZE = 256
# Jobs in flight per core: one running, one queued so that a freed core never waits for the
# driver to submit the next.
_JOBS_PER_CORE = 2
_MAX_JOBS_IN_FLIGHT = 512
_PROGRESS_EVERY_S = 5.0
_CHECK_EVERY_S = 1.0
_WARN_AFTER_S = 30.0
#: Seconds a map waits with no executor before it fails (a medops key of ``executor.conf``).
EXECUTOR_TIMEOUT_KEY = "spark.medops.executorTimeout"
_DEFAULT_EXECUTOR_TIMEOUT_S = 300.0
_CANCEL_WAIT_S = 30.0
_map_ids = itertools.count(1)


class SparkJobError(PipelineError, BrokenExecutor):
    """A Spark job failed for a reason other than an exception in the mapped function: a
    Python worker crashed, executors were lost beyond ``spark.task.maxFailures``, the job was
    cancelled. Being a ``BrokenExecutor`` too, callers that handle a crashed local pool
    handle this the same way."""


@dataclass(frozen=True)
class SparkProgress:
    """Where the running ``map`` stands: partitions done (their results in the driver's
    hands), and from Spark's status tracker the tasks of its job group running now and the
    failed task attempts seen so far (Spark retries those up to ``spark.task.maxFailures``)."""

    description: str
    partitions: int
    done: int
    running_tasks: int
    failed_tasks: int

    def __str__(self) -> str:
        failed = f", {self.failed_tasks} failed attempt(s)" if self.failed_tasks else ""
        return (f"spark {self.description}: {self.done}/{self.partitions} partitions done, "
                f"{self.running_tasks} task(s) running{failed}")


class SparkExecutor(Executor):
    """Maps over a Spark cluster. The session starts on first use (5-15 s) and stays until
    :meth:`close`, which stops it if this executor started it.

    ``master`` is one of local, local[N], local[*], spark://HOST:PORT (comma-separated for
    standby masters), yarn, k8s://https://HOST:PORT. ``conf`` holds Spark properties applied
    over medops' defaults, and ``spark.medops.executorTimeout``: the seconds a map waits while
    the cluster gives it no executor before it fails with :class:`UnavailableError` (default
    300). ``parallelism`` sets ``spark.default.parallelism``, the number of cores the
    partition sizes are planned for.
    """

    def __init__(self, master: str = "local[*]", conf: Mapping[str, str] | None = None, *,
                 parallelism: int | None = None, app_name: str = "medops") -> None:
        if parallelism is not None and parallelism < 1:
            raise ConfigError(f"executor.workers must be at least 1 (got {parallelism})")
        self.master = check_master(master)
        self.conf = dict(conf or {})
        self._executor_timeout = _executor_timeout(self.conf)
        self.parallelism = parallelism
        self.app_name = app_name
        self._session: SparkSession | None = None
        self._owns_session = False
        self._closed = False
        self._current: _MapState | None = None
        self.last_map: SparkProgress | None = None
        """How the last finished ``map`` went, task attempts that failed and were rerun
        included (an executor lost mid-map shows here)."""

    @property
    def workers(self) -> int:
        """The cores the cluster offers now (Spark's default parallelism)."""
        return int(self.session.sparkContext.defaultParallelism)

    @property
    def session(self) -> SparkSession:
        """The Spark session, started on first use and reused until :meth:`close`."""
        if self._closed:
            raise RuntimeError("this SparkExecutor has been closed")
        if self._session is None:
            self._session, self._owns_session = start_session(
                self.master, self.conf, self.parallelism, self.app_name)
        return self._session

    def progress(self) -> SparkProgress | None:
        """The running ``map``'s progress from Spark's status tracker; None when idle."""
        state = self._current
        return None if state is None or self._session is None else state.progress(
            self._session.sparkContext)

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, chunksize: int | None = None
    ) -> Iterator[R]:
        if chunksize is not None and chunksize < 1:
            raise ValueError(f"chunksize must be at least 1 (got {chunksize})")
        if not items:
            return iter(())
        session = self.session
        sc = session.sparkContext
        rows = [(pos, pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL))
                for pos, item in enumerate(items)]
        cores = max(1, int(sc.defaultParallelism))
        planned = min(_MAX_CHUNKSIZE, math.ceil(len(rows) / (cores * _PARTITIONS_PER_CORE)))
        partitions = math.ceil(len(rows) / max(chunksize or 1, planned, _MIN_CHUNKSIZE))
        # parallelize slices by position, so a partition is the same items on every attempt
        # and the partitions in order are the items in order; mapInPandas keeps both.
        frame = session.createDataFrame(sc.parallelize(rows, partitions), ITEM_SCHEMA,
                                        verifySchema=False)  # built right here
        results = frame.mapInPandas(PartitionTask(fn), RESULT_SCHEMA).rdd
        name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "")
        state = _MapState(f"medops-map-{next(_map_ids)}-{uuid.uuid4().hex[:8]}",
                          f"map {name or 'fn'} over {len(rows)} item(s)", partitions, len(rows))
        return self._stream(sc, results, state)

    def close(self) -> None:
        """Stop the session if this executor started it, and refuse further maps."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            session.stop()

    def _stream(self, sc: SparkContext, rdd: RDD[Any], state: _MapState) -> Iterator[Any]:
        threads = min(_MAX_JOBS_IN_FLIGHT, state.partitions,
                      _JOBS_PER_CORE * max(1, int(sc.defaultParallelism)))
        jobs = _Jobs(sc, rdd, state, threads)
        self._current = state
        monitor = _Monitor(sc, state, self.master, jobs, self._executor_timeout)
        monitor.start()
        finished = False
        try:
            expected = 0  # the position of the next item: nothing lost, nothing twice
            for index in range(state.partitions):
                rows = jobs.result(index)
                state.done += 1
                for row in rows:
                    if row["pos"] != expected:
                        raise SparkJobError(
                            f"spark {state.description}: partition {index} returned item "
                            f"{row['pos']} where item {expected} was due; the map is stopped "
                            "rather than returning results out of order")
                    if row["error"] is not None:
                        raise rebuild(row["exception"], row["error"])
                    expected += 1
                    yield pickle.loads(row["value"])
            if expected != state.items:
                raise SparkJobError(f"spark {state.description}: {expected} result(s) came "
                                    f"back for {state.items} item(s)")
            finished = True
            self.last_map = state.progress(sc, finished=True)
            if self.last_map.failed_tasks:
                log.warning("%s; Spark reran the failed tasks", self.last_map)
        finally:
            # Ctrl-C, an error, or the caller stopped early: nothing of this map may go on.
            monitor.stop()
            jobs.stop(cancel=not finished)
            self._current = None


class _Jobs:
    """``threads`` driver threads, each running one single-partition job at a time and taking
    the partitions in order; the results wait, keyed by partition, for the consumer."""

    def __init__(self, sc: SparkContext, rdd: RDD[Any], state: _MapState, threads: int) -> None:
        self._sc, self._rdd, self._state = sc, rdd, state
        self._next = 0
        self._results: dict[int, list[Any] | BaseException] = {}
        self._stopping = False
        self._failure: BaseException | None = None
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._work, name=f"medops-spark-{i}",
                                          daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def result(self, index: int) -> list[Any]:
        """Partition ``index``'s rows, once its job is done; its failure raised."""
        with self._cond:
            while index not in self._results and self._failure is None:
                self._cond.wait(timeout=0.5)  # a timeout keeps Ctrl-C deliverable
            result = self._results.pop(index, None)
            failure = self._failure
        if failure is not None and not isinstance(result, list):
            raise failure  # rather than the cancellation it caused
        if isinstance(result, BaseException):
            raise result
        assert result is not None
        return result

    def fail(self, error: BaseException) -> None:
        """End the map with ``error``: the consumer raises it at the partition it waits for,
        and the running jobs are cancelled."""
        with self._cond:
            self._failure = error
            self._stopping = True
            self._cond.notify_all()
        self._sc.cancelJobGroup(self._state.group)

    def stop(self, *, cancel: bool) -> None:
        """Take no more partitions, cancel the jobs still running (``cancel``), and wait for
        the threads."""
        with self._cond:
            self._stopping = True
        if cancel:
            self._sc.cancelJobGroup(self._state.group)
        deadline = time.monotonic() + _CANCEL_WAIT_S
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _take(self) -> int | None:
        with self._cond:
            if self._stopping or self._next >= self._state.partitions:
                return None
            index, self._next = self._next, self._next + 1
            return index

    def _work(self) -> None:
        # Job groups are per thread (PySpark pins a JVM thread to each Python thread).
        self._sc.setJobGroup(self._state.group, self._state.description, interruptOnCancel=True)
        while (index := self._take()) is not None:
            result: list[Any] | BaseException
            try:
                result = self._sc.runJob(self._rdd, rows_of, [index])
            except Exception as exc:
                result = SparkJobError(f"spark {self._state.description}: partition {index} "
                                       f"failed: {_spark_reason(exc)}")
                result.__cause__ = exc
            failed = isinstance(result, BaseException) or any(
                row["error"] is not None for row in result)
            with self._cond:
                self._results[index] = result
                if failed:  # the map ends at this partition: start no later ones
                    self._stopping = True
                self._cond.notify_all()


class _MapState:
    def __init__(self, group: str, description: str, partitions: int, items: int) -> None:
        self.group = group
        self.description = description
        self.partitions = partitions
        self.items = items
        self.done = 0
        self._failed: dict[int, int] = {}  # failed attempts per job, as last seen running

    def progress(self, sc: SparkContext, *, finished: bool = False) -> SparkProgress:
        """Asks the status tracker about this map's running jobs only, since a long map has
        thousands of finished ones; about all of them once it has ``finished``."""
        tracker = sc.statusTracker()
        jobs = set(tracker.getJobIdsForGroup(self.group))
        running = 0
        for job_id in jobs if finished else jobs & set(tracker.getActiveJobsIds()):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job is not None else ():
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    running += stage.numActiveTasks
                    self._failed[job_id] = stage.numFailedTasks
        return SparkProgress(self.description, self.partitions, self.done, running,
                             sum(self._failed.values()))


class _Monitor:
    """Watches a map through the status tracker: logs its progress every few seconds, warns
    when a task attempt failed (Spark reruns it), and ends the map when no executor has been
    there for ``executor_timeout`` seconds. Spark itself would leave the tasks waiting forever
    on a cluster without a free worker that has the cores and memory asked for."""

    def __init__(self, sc: SparkContext, state: _MapState, master: str, jobs: _Jobs,
                 executor_timeout: float) -> None:
        self._sc, self._state, self._master, self._jobs = sc, state, master, jobs
        self._timeout = executor_timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medops-spark-progress",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=_PROGRESS_EVERY_S)

    def _run(self) -> None:
        local = self._master.startswith(LOCAL_MASTERS)
        started = seen = logged = time.monotonic()
        warned = failed = 0
        while not self._stop.wait(_CHECK_EVERY_S):
            now = time.monotonic()
            try:
                # The driver counts as one executor; local masters run the tasks in it.
                if local or len(self._sc.statusTracker().getExecutorInfos()) > 1:
                    seen = now
                progress = self._state.progress(self._sc)
            except Exception:  # the context is stopping; the map reports the real error
                return
            if now - logged >= _PROGRESS_EVERY_S:
                logged = now
                log.info("%s", progress)
            if progress.failed_tasks > failed:
                failed = progress.failed_tasks
                log.warning("%s; Spark reruns the failed tasks (an executor lost, a worker "
                            "killed), up to spark.task.maxFailures", progress)
            waiting = now - seen
            if waiting > self._timeout:
                self._jobs.fail(UnavailableError(
                    f"no Spark executor has been available on {self._master} for "
                    f"{waiting:.0f} s (spark {self._state.description}, {self._state.done}/"
                    f"{self._state.partitions} partitions done): the cluster has no free "
                    f"worker with the cores and memory asked for (spark.executor.cores, "
                    f"spark.executor.memory); check its workers, or set "
                    f"{EXECUTOR_TIMEOUT_KEY} in executor.conf to wait longer"))
                return
            if waiting > _WARN_AFTER_S and now - started - warned > _WARN_AFTER_S:
                warned = int(now - started)
                log.warning("spark %s: no executor on %s for %.0f s; check that the cluster "
                            "has free workers with enough cores and memory (the map ends "
                            "after %.0f s)", self._state.description, self._master, waiting,
                            self._timeout)


def _executor_timeout(conf: Mapping[str, str]) -> float:
    value = conf.get(EXECUTOR_TIMEOUT_KEY, _DEFAULT_EXECUTOR_TIMEOUT_S)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"executor.conf: {EXECUTOR_TIMEOUT_KEY} must be a number of seconds "
                          f"above 0 (got {value!r})")
    return seconds


def _spark_reason(exc: Exception) -> str:
    """The first line Spark gives as the reason, without the JVM stack."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
