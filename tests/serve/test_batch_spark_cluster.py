"""batch-predict on the session's real standalone Spark cluster (master and worker JVMs from
the pip package, on loopback): the same tables as the local executor, and its worker killed
with SIGKILL in the middle of the job, after which Spark reruns the lost tasks on a new worker
and every file is in the output exactly once (the fault tests of the executor's own maps are
in tests/executor/test_spark_pipeline.py).

The inputs are on moto's S3 and the worker runs with its own working folder, as on a real
cluster; the model comes from the project's MLflow store by its tracking URI.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from medops.serve.batch import BatchSummary, ModelRef, Predictor, batch_predict
from medops.serve.batch_files import Files
from tests.serve.batch_data import (
    BAD,
    SPARK_AWS_CONF,
    aws_env,
    direct,
    make_inputs,
    many_pngs,
    probs,
    s3_client,
    s3_endpoint,
    tables,
    upload,
)
from tests.spark_cluster import DRIVER_CONF, SparkCluster, missing_reason

from ..conftest import TrainedProject

pytestmark = pytest.mark.slow

if (_reason := missing_reason()) is not None:
    if os.environ.get("CI"):
        pytest.fail(f"{_reason}; the dev extra and a JDK are required in CI", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

from medops.executor.spark import SparkExecutor  # noqa: E402

__all__ = ["aws_env", "s3_endpoint"]  # fixtures, used by name
CONF = {**DRIVER_CONF, **SPARK_AWS_CONF}


@pytest.fixture(scope="module")
def predictor(trained_project: TrainedProject) -> Predictor:
    ref = ModelRef.parse(f"{trained_project.project.config.model_name}/1", "unused")
    return Predictor.from_registry(trained_project.project.registry, ref, batch_size=4)


def test_standalone_cluster_s3_to_s3_equals_local(
        trained_project: TrainedProject, predictor: Predictor, spark_master: str,
        s3_endpoint: str, aws_env: None, tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "incoming", trained_project.raw)
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="cluster-raw")
    s3.create_bucket(Bucket="cluster-out")
    local = upload(s3, inputs, "cluster-raw", "xrays")
    files = Files(s3_endpoint)
    local_out, cluster_out = str(tmp_path / "local") + "/", "s3://cluster-out/preds/"
    batch_predict(predictor, str(inputs), local_out)
    with SparkExecutor(spark_master, CONF) as spark:
        summary = batch_predict(predictor, "s3://cluster-raw/xrays/", cluster_out, files=files,
                                executor=spark)
    assert (summary.predicted, summary.failed) == (len(local) - 1 - len(BAD), len(BAD))

    preds, errors = tables(cluster_out, files)
    local_preds, local_errors = tables(local_out, Files())
    assert {u.rsplit("/", 1)[1] for u in errors["uri"]} == BAD
    # the same files in both (the local run names them by path)
    prefix = len("s3://cluster-raw/xrays/")
    assert [str(inputs / u[prefix:]) for u in preds["uri"]] == list(local_preds["uri"])
    np.testing.assert_allclose(probs(preds, predictor.model),
                               probs(local_preds, predictor.model), atol=1e-5)
    assert list(preds["label"]) == list(local_preds["label"])
    assert list(errors["error"]) == list(local_errors["error"])


def test_a_worker_killed_mid_job_its_tasks_rerun_and_every_file_is_there_once(
        predictor: Predictor, spark_cluster: SparkCluster, s3_endpoint: str, aws_env: None,
        tmp_path: Path) -> None:
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="fault-in")
    s3.create_bucket(Bucket="fault-out")
    local = upload(s3, many_pngs(tmp_path / "pngs", 80), "fault-in", "scans")
    out = "s3://fault-out/preds/"
    files = Files(s3_endpoint)
    cluster = spark_cluster
    with SparkExecutor(cluster.url, CONF) as spark:
        spark.session  # noqa: B018  (started before the job, so the kill lands in the job)
        result: dict[str, BatchSummary | BaseException] = {}

        def run() -> None:
            try:
                # partitions of 2 files: 40 tasks, most of them still to run at the kill
                result["summary"] = batch_predict(predictor, "s3://fault-in/scans/", out,
                                                  files=files, executor=spark, chunk_size=2)
            except BaseException as exc:  # raised again below, in the test's thread
                result["error"] = exc

        driver = threading.Thread(target=run)
        driver.start()
        try:
            _wait_for_parts(s3, "fault-out", "preds/predictions/", driver)
            cluster.kill_worker()  # SIGKILL: the worker, its executor and Python workers
            # one part per task (every file is good): the tasks done when the worker died
            done_at_kill = _count_parts(s3, "fault-out", "preds/predictions/")
        finally:
            if cluster.worker is None:  # later tests of the session need a worker
                cluster.start_worker()  # Spark gives the job a new executor there
        driver.join(timeout=300)
        assert not driver.is_alive(), "the job did not finish after the worker came back"
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    summary = result["summary"]
    assert isinstance(summary, BatchSummary)
    assert (summary.total, summary.predicted, summary.failed) == (len(local), len(local), 0)
    assert 0 < done_at_kill < len(local) // 2, f"{done_at_kill} of 40 tasks done: not mid-job"

    preds, errors = tables(out, files)
    assert preds["uri"].is_unique and len(errors) == 0
    assert sorted(preds["uri"]) == sorted(local)
    expected = direct(predictor.model, [local[u].read_bytes() for u in preds["uri"]])
    np.testing.assert_allclose(probs(preds, predictor.model), expected, atol=1e-5)


def _wait_for_parts(s3: object, bucket: str, prefix: str, driver: threading.Thread,
                    timeout: float = 180.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = _count_parts(s3, bucket, prefix)
        if parts:
            return parts
        if not driver.is_alive():
            raise AssertionError("the job ended before writing a part file")
        time.sleep(0.05)
    raise AssertionError(f"no part file under s3://{bucket}/{prefix} within {timeout} s")


def _count_parts(s3: object, bucket: str, prefix: str) -> int:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
    return sum(1 for o in listed.get("Contents", []) if "/part-" in o["Key"])
