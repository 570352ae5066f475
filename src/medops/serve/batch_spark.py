"""Batch prediction on Spark: what the driver plans, and what each Spark task runs.

The driver lists the input URIs (never their bytes: a DataFrame of one string column),
spreads them in order over partitions sized for the work (at least one forward batch, at most
``chunk_size`` files, about four per core), and runs ``mapInPandas`` over them. Each task

1. takes the model from a module-level cache of its Python worker, loading it once per worker
   from the registry by its :class:`~medops.serve.batch.ModelLocation` (tracking URI, name,
   version; the files downloaded once per machine), never from a pickle of the model;
2. reads its files (a local path or ``s3://`` through boto3, the endpoint from ``--endpoint-url``
   or the worker's environment), decodes and preprocesses them with the model's profile and
   predicts, as :meth:`Predictor.predict` does in one process;
3. writes its shard of the two tables (:mod:`medops.serve.batch_shards`) and returns one row:
   the shard's id and counts. The driver collects those rows, not the predictions.

Spark reruns a task whose executor was lost; the task writes the same part files again. A
failure of the task itself (a model that cannot load, an output it may not write) comes back
as that row's exception and is raised in the driver with its type, without Spark's retries.
Workers need ``MEDOPS_MODEL_CACHE`` (default: the temp folder) to be writable.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import tempfile
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medops.errors import ConfigError
from medops.executor.threads import limit_spark_task_threads
from medops.serve.batch import BatchOutput, ModelLocation, Predictor
from medops.serve.batch_files import Files, OutputFormat, is_s3
from medops.serve.batch_shards import ShardResult, write_shard

if TYPE_CHECKING:
    from pyspark import SparkContext

    from medops.executor.spark import SparkExecutor
    from medops.registry import LoadedModel

log = logging.getLogger(__name__)

#: Where a Spark worker keeps downloaded model versions (one download per machine).
MODEL_CACHE_ENV = "MEDOPS_MODEL_CACHE"
_RESULT_SCHEMA = "shard string, predicted long, failed long, error string, exception binary"
# ~4 partitions per core: the last ones balance out and progress moves in steps of a quarter
# of a core's share, while each task (~30-100 ms of Spark overhead) still gets real work.
_PARTITIONS_PER_CORE = 4
_PROGRESS_EVERY_S = 0.5

_PREDICTORS: dict[tuple[ModelLocation, int], Predictor] = {}
_FILES: dict[str | None, Files] = {}
_CACHE_LOCK = threading.Lock()


def worker_predictor(location: ModelLocation, batch_size: int) -> Predictor:
    """The model at ``location``, loaded once per Python worker and kept for its later
    tasks (Spark reuses its Python workers)."""
    key = (location, batch_size)
    with _CACHE_LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS[key] = Predictor(_load(location), location.name, location.version,
                                         batch_size, location)
        return _PREDICTORS[key]


def _load(location: ModelLocation) -> LoadedModel:
    from medops.registry import ModelRegistry, Tracker, load_model_dir

    base = Path(os.environ.get(MODEL_CACHE_ENV) or Path(tempfile.gettempdir()) / "medops-models")
    # Keyed by the store and the version's artifact URI: a registered version's files never
    # change, and another store's (or a recreated store's) "version 1" gets a folder of its own.
    key = f"{location.tracking_uri}\n{location.source}".encode()
    cache = base / hashlib.sha256(key).hexdigest()[:16]
    folder = cache / location.name / location.version
    if (folder / "MLmodel").is_file():
        return load_model_dir(folder)
    # The tracker only lends its MLflow client here; no run or experiment is created.
    client = Tracker(location.tracking_uri, "medops-batch", cache / "unused").client
    return ModelRegistry(client, location.name, cache).load(location.version)


def _worker_files(endpoint_url: str | None) -> Files:
    with _CACHE_LOCK:
        return _FILES.setdefault(endpoint_url, Files(endpoint_url))


@dataclass(frozen=True)
class ShardTask:
    """The function ``mapInPandas`` runs over a partition of URIs: small and picklable."""

    location: ModelLocation
    batch_size: int
    endpoint_url: str | None
    out: str  # the output folder
    chunk_size: int

    def __call__(self, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        limit_spark_task_threads()
        uris = [str(u) for batch in batches for u in batch["uri"]]
        if not uris:
            return
        try:
            result = self._run(uris)
        except Exception as exc:
            text = "".join(traceback.format_exception(exc))
            try:
                blob: bytes | None = pickle.dumps(exc)
            except Exception:  # an exception holding unpicklable state: its text travels
                blob = None
            yield pd.DataFrame({"shard": [None], "predicted": [0], "failed": [0],
                                "error": [text], "exception": [blob]})
            return
        yield pd.DataFrame({"shard": [result.shard], "predicted": [result.predicted],
                            "failed": [result.failed], "error": [None], "exception": [None]})

    def _run(self, uris: list[str]) -> ShardResult:
        predictor = worker_predictor(self.location, self.batch_size)
        files = _worker_files(self.endpoint_url)
        rows = pd.concat([predictor.predict(uris[i:i + self.chunk_size], files)
                          for i in range(0, len(uris), self.chunk_size)], ignore_index=True)
        return write_shard(rows, BatchOutput(self.out, OutputFormat.PARQUET, True), predictor,
                           files)


def partition_size(files: int, cores: int, batch_size: int, chunk_size: int) -> int:
    """Files per partition: about :data:`_PARTITIONS_PER_CORE` partitions per core, but at
    least one forward batch and at most ``chunk_size`` (what a killed task loses)."""
    wanted = math.ceil(files / max(1, cores * _PARTITIONS_PER_CORE))
    return max(1, min(chunk_size, max(batch_size, wanted)))


def predict_on_spark(executor: SparkExecutor, predictor: Predictor, todo: Sequence[str],
                     target: BatchOutput, files: Files, *, chunk_size: int,
                     on_progress: Callable[[int, int], None] | None) -> list[ShardResult]:
    """Run the batch of ``todo`` as one Spark job; the shards each task wrote."""
    if predictor.location is None:
        raise ConfigError(f"{predictor.name} v{predictor.version} was not loaded from a "
                          "registry, and Spark workers load the model from one; use "
                          "Predictor.from_registry")
    if not todo:
        return []
    _warn_about_local_paths(executor.master, predictor.location, target, todo)
    session = executor.session
    sc = session.sparkContext
    size = partition_size(len(todo), int(sc.defaultParallelism), predictor.batch_size,
                          chunk_size)
    partitions = math.ceil(len(todo) / size)
    # parallelize slices a list by position: the same files in the same partition on every
    # attempt, hence the same shard ids, and no shuffle.
    uris = session.createDataFrame(sc.parallelize([(u,) for u in todo], partitions),
                                   "uri string")
    task = ShardTask(predictor.location, predictor.batch_size, files.endpoint_url, target.uri,
                     chunk_size)
    group = f"medops-batch-predict-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, f"batch-predict {len(todo)} file(s) with {predictor.name} "
                   f"v{predictor.version}", interruptOnCancel=True)
    progress = _Progress(sc, group, len(todo), on_progress)
    progress.start()
    try:
        rows = uris.mapInPandas(task, _RESULT_SCHEMA).collect()
    except BaseException as exc:
        sc.cancelJobGroup(group)  # Ctrl-C or a failed job: no task of it may go on
        if isinstance(exc, Exception):
            from medops.executor.spark import SparkJobError

            raise SparkJobError(f"spark batch-predict into {target.uri} failed: "
                                f"{_reason(exc)}") from exc
        raise
    finally:
        progress.stop()
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    for row in rows:
        if row["error"] is not None:
            raise _rebuild(row["exception"], row["error"])
    if on_progress:
        on_progress(len(todo), len(todo))
    return [ShardResult(r["shard"], int(r["predicted"]), int(r["failed"])) for r in rows]


def _rebuild(blob: bytes | None, text: str) -> BaseException:
    from medops.executor.spark import SparkJobError
    from medops.executor.spark_tasks import rebuild

    return rebuild(blob, text, lambda t: SparkJobError(f"a batch-predict task failed:\n{t}"))


def _reason(exc: Exception) -> str:
    """Why the job failed, in a line: the Python error of a task when there is one, else the
    first line Spark gives, without the JVM stack."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else str(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    python = [line for line in lines if line.split(":", 1)[0].endswith(("Error", "Exception"))
              and not line.startswith(("org.apache", "py4j", "java."))]
    if python:
        return python[-1]
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _warn_about_local_paths(master: str, location: ModelLocation, target: BatchOutput,
                            todo: Sequence[str]) -> None:
    """Workers on other machines see local paths only on a shared filesystem."""
    if master.startswith("local") or _loopback(master):
        return
    local = [what for what, uri in (("the tracking store", location.tracking_uri),
                                    ("--out", target.uri), ("the inputs", todo[0]))
             if not is_s3(uri) and not uri.startswith(("http://", "https://"))]
    if local:
        log.warning("spark master %s: %s %s local to this machine; its workers must see the "
                    "same paths (a shared filesystem), or use s3:// and an MLflow server",
                    master, ", ".join(local), "is" if len(local) == 1 else "are")


def _loopback(master: str) -> bool:
    hosts = [part.rsplit(":", 1)[0] for part in master.removeprefix("spark://").split(",")]
    return master.startswith("spark://") and all(
        h in ("localhost", "[::1]") or h.startswith("127.") for h in hosts)


class _Progress:
    """Files done, from the status tracker's completed tasks of the job (the partitions are
    of equal size to within one file), reported while the job runs."""

    def __init__(self, sc: SparkContext, group: str, total: int,
                 on_progress: Callable[[int, int], None] | None) -> None:
        self._sc, self._group, self._total, self._report = sc, group, total, on_progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="medops-batch-progress",
                                        daemon=True)

    def start(self) -> None:
        if self._report is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self._report is not None
        shown = 0
        while not self._stop.wait(_PROGRESS_EVERY_S):
            try:
                done = self._files_done()
            except Exception:  # the context is stopping; the job reports the real error
                return
            if done > shown:
                shown = done
                self._report(done, self._total)

    def _files_done(self) -> int:
        tracker = self._sc.statusTracker()
        completed = tasks = 0
        for job_id in tracker.getJobIdsForGroup(self._group):
            job = tracker.getJobInfo(job_id)
            for stage_id in job.stageIds if job is not None else ():
                stage = tracker.getStageInfo(stage_id)
                if stage is not None:
                    completed += stage.numCompletedTasks
                    tasks += stage.numTasks
        return min(self._total, self._total * completed // tasks) if tasks else 0
