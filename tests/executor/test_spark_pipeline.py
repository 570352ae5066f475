"""The pipeline's map steps on Spark give what the local process pool gives, byte for byte,
and a worker lost in the middle of a map costs time, not results.

The real pipeline (ingest, validate, split, preprocess) runs on real DICOM files, three of them
broken, once with ``executor.kind: local`` and then with ``kind: spark`` on ``local[2]`` and on a
real standalone cluster; the verdicts of validation and the preprocessed cache entries (names,
content hashes, bytes) must be the same. On the cluster, the worker is then killed while a map
runs and a new one started: Spark reruns the lost tasks and every item comes back once.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from medops.config.enums import Step
from medops.demo.synthetic import SyntheticDataset, make_synthetic_dataset
from medops.errors import UnavailableError
from medops.executor.spark import EXECUTOR_TIMEOUT_KEY, SparkExecutor
from medops.pipeline import PipelineRunner, SilentReporter
from medops.project import Project
from medops.storage import ItemStatus, RunStatus
from tests.executor.spark_work import slow_square, square
from tests.spark_cluster import DRIVER_CONF, SparkCluster, missing_reason

pytestmark = pytest.mark.slow

if (_reason := missing_reason()) is not None:
    if os.environ.get("CI"):
        pytest.fail(f"{_reason}; the dev extra and a JDK are required in CI", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

QUICK: dict[str, Any] = {"preprocess.size": [32, 32], "data.split.val": 0.25,
                         "data.split.test": 0.25, "pipeline.retries.attempts": 1}


@dataclass(frozen=True)
class Outcome:
    verdicts: dict[str, tuple[str, str]]  # file name -> (status, reason, project as ROOT)
    cache: dict[str, bytes]  # path under the cache root -> the .npy file's bytes
    computed: int


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("spark-data") / "raw", n_patients=8,
                                  images_per_patient=2, size=40, corrupt_examples=True)


def _run(root: Path, dataset: SyntheticDataset, **executor: Any) -> Outcome:
    Project.init(root, name="spark-test")
    shutil.rmtree(root / "data" / "raw")
    shutil.copytree(dataset.root, root / "data" / "raw")
    overrides = {**QUICK, **{f"executor.{k}": v for k, v in executor.items()}}
    project = Project.load(root, overrides)
    try:
        record = PipelineRunner(project, SilentReporter()).run(until=Step.PREPROCESS)
        assert record.status is RunStatus.SUCCEEDED, record
        outputs = {s.name: s.outputs for s in project.state.get_run(record.id).steps}
        verdicts = {Path(i.uri).name: (str(i.status), (i.reason or "").replace(str(root), "ROOT"))
                    for i in project.state.items()}
        cache_root = project.artifacts / "cache" / "preprocess"
    finally:
        project.close()
    cache = {str(p.relative_to(cache_root)): p.read_bytes()
             for p in sorted(cache_root.rglob("*.npy"))}
    return Outcome(verdicts, cache, int(outputs["preprocess"]["computed"]))


@pytest.fixture(scope="module")
def on_local_pool(tmp_path_factory: pytest.TempPathFactory, dataset: SyntheticDataset) -> Outcome:
    return _run(tmp_path_factory.mktemp("local") / "proj", dataset, kind="local", workers=2)


def _assert_same(spark: Outcome, local: Outcome, dataset: SyntheticDataset) -> None:
    quarantined = {n for n, (status, _) in spark.verdicts.items()
                   if status == ItemStatus.QUARANTINED}
    assert quarantined == {p.name for p in dataset.broken_files}
    assert spark.verdicts == local.verdicts  # same verdicts, same reasons
    assert spark.computed == local.computed == len(local.cache) > 0
    assert spark.cache.keys() == local.cache.keys()  # same profile, content hashes, frames
    assert spark.cache == local.cache  # byte-identical arrays


def test_spark_local_matches_the_local_pool(tmp_path: Path, dataset: SyntheticDataset,
                                            on_local_pool: Outcome) -> None:
    spark = _run(tmp_path / "proj", dataset, kind="spark", master="local[2]")
    _assert_same(spark, on_local_pool, dataset)


def test_spark_cluster_matches_the_local_pool(tmp_path: Path, dataset: SyntheticDataset,
                                              on_local_pool: Outcome, spark_master: str) -> None:
    spark = _run(tmp_path / "proj", dataset, kind="spark", master=spark_master,
                 conf=DRIVER_CONF)
    _assert_same(spark, on_local_pool, dataset)


def test_a_worker_killed_mid_map_loses_nothing_and_repeats_nothing(
        spark_cluster: SparkCluster) -> None:
    items = list(range(48))
    try:
        with SparkExecutor(spark_cluster.url, DRIVER_CONF) as executor:
            # 8 or more partitions of at most 1.8 s (by the cores the cluster reports): the kill
            # lands with most of them to come.
            results = executor.map(slow_square, items)
            got = [next(results)]
            spark_cluster.kill_worker()  # the executor JVM and its Python workers with it
            spark_cluster.start_worker()
            got += list(results)
            summary = executor.last_map
    finally:
        if spark_cluster.worker is None:  # later tests need a worker
            spark_cluster.start_worker()
    assert got == [x * x for x in items]  # every item once, in order
    assert summary is not None and summary.done == summary.partitions >= 8
    assert summary.failed_tasks >= 1  # the tasks running at the kill were rerun


def test_a_cluster_without_workers_fails_the_map_in_bounded_time(
        spark_cluster: SparkCluster) -> None:
    spark_cluster.kill_worker()
    try:
        with SparkExecutor(spark_cluster.url, {**DRIVER_CONF, EXECUTOR_TIMEOUT_KEY: "6"}) as ex:
            started = time.monotonic()
            with pytest.raises(UnavailableError, match=(
                    f"no Spark executor has been available on {spark_cluster.url} for "
                    r"\d+ s.*"
                    f"set {EXECUTOR_TIMEOUT_KEY} in executor.conf to wait longer")):
                list(ex.map(square, range(4)))
            assert time.monotonic() - started < 20
    finally:
        spark_cluster.start_worker()
