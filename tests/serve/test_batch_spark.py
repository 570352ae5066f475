"""batch-predict on Spark ``local[2]`` into the folder layout: the same tables as the local
executor, S3 to S3 through moto's server, resume, the errors table, a driver killed with
SIGKILL, and the errors a user meets (a missing model, an unreadable source, an output that
holds another model's predictions).

One ``local[2]`` session serves the module; the standalone cluster is in
test_batch_spark_cluster.py (a process has one Spark context at a time).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medops.errors import ConfigError, NotFoundError
from medops.serve.batch import ModelRef, Predictor, batch_predict, list_inputs
from medops.serve.batch_files import Files
from medops.serve.batch_shards import shard_id
from medops.serve.batch_spark import ShardTask
from tests.serve.batch_data import (
    BAD,
    SPARK_AWS_CONF,
    XRAYS,
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
from tests.spark_cluster import missing_reason

from ..conftest import TrainedProject

pytestmark = pytest.mark.slow

if (_reason := missing_reason()) is not None:
    if os.environ.get("CI"):
        pytest.fail(f"{_reason}; the dev extra and a JDK are required in CI", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

from medops.executor.spark import SparkExecutor  # noqa: E402

__all__ = ["aws_env", "s3_endpoint"]  # fixtures, used by name
MEDOPS = str(Path(sys.executable).parent / "medops")
GOOD_FILES = 8 + 9 + 2  # synthetic DICOM, real X-rays, generated PNG/JPEG


@pytest.fixture(scope="module")
def inputs(trained_project: TrainedProject, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inputs(tmp_path_factory.mktemp("batch-spark") / "incoming",
                       trained_project.raw)


@pytest.fixture(scope="module")
def predictor(trained_project: TrainedProject) -> Predictor:
    ref = ModelRef.parse(f"{trained_project.project.config.model_name}/1", "unused")
    return Predictor.from_registry(trained_project.project.registry, ref, batch_size=4)


@pytest.fixture(scope="module")
def spark(aws_env: None) -> Iterator[SparkExecutor]:
    with SparkExecutor("local[2]", SPARK_AWS_CONF, app_name="medops-batch-tests") as executor:
        yield executor


def _exactly_once(preds: pd.DataFrame, errors: pd.DataFrame, uris: list[str]) -> None:
    assert preds["uri"].is_unique and errors["uri"].is_unique
    assert not set(preds["uri"]) & set(errors["uri"])
    assert sorted([*preds["uri"], *errors["uri"]]) == sorted(uris)


def test_spark_and_local_write_the_same_tables(predictor: Predictor, inputs: Path,
                                               spark: SparkExecutor, tmp_path: Path) -> None:
    files = Files()
    uris = list_inputs(str(inputs), files)
    assert len(uris) == GOOD_FILES + len(BAD)
    local_out, spark_out = str(tmp_path / "local") + "/", str(tmp_path / "spark") + "/"
    on_local = batch_predict(predictor, str(inputs), local_out, chunk_size=7)
    seen: list[tuple[int, int]] = []
    on_spark = batch_predict(predictor, str(inputs), spark_out, executor=spark, chunk_size=7,
                             on_progress=lambda done, total: seen.append((done, total)))
    for summary in (on_local, on_spark):
        assert (summary.total, summary.predicted, summary.failed, summary.skipped) == (
            len(uris), GOOD_FILES, len(BAD), 0)
        assert {Path(e["uri"]).name for e in summary.errors} == BAD
    assert seen[0] == (0, len(uris)) and seen[-1] == (len(uris), len(uris))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    local_preds, local_errors = tables(local_out, files)
    spark_preds, spark_errors = tables(spark_out, files)
    _exactly_once(spark_preds, spark_errors, uris)
    assert list(spark_preds.columns) == ["uri", *(f"p_{c}" for c in predictor.model.classes),
                                         "label", "model", "version"]
    assert list(spark_errors.columns) == ["uri", "error"]
    assert list(spark_preds["uri"]) == list(local_preds["uri"])
    np.testing.assert_allclose(probs(spark_preds, predictor.model),
                               probs(local_preds, predictor.model), atol=1e-5)
    assert list(spark_preds["label"]) == list(local_preds["label"])
    assert set(spark_preds["model"]) == {predictor.name} and set(spark_preds["version"]) == {"1"}
    expected = direct(predictor.model, [Path(u).read_bytes() for u in spark_preds["uri"]])
    np.testing.assert_allclose(probs(spark_preds, predictor.model), expected, atol=1e-5)
    assert spark_errors.equals(local_errors)  # the same reasons, word for word
    assert all(e and "bytes>" not in e for e in spark_errors["error"])

    # What each task receives: where the model is, not the model (loaded once per worker).
    from pyspark import cloudpickle

    assert predictor.location is not None
    task = ShardTask(predictor.location, 4, None, spark_out, 7)
    assert len(cloudpickle.dumps(task)) < 2048

    # A shard's part files (one per table) are named by its files and the model version,
    # so a task that Spark runs again rewrites the same files.
    for folder in (tmp_path / "local", tmp_path / "spark"):
        shards: dict[str, list[str]] = {}
        for part in folder.glob("*/part-*.parquet"):
            shards.setdefault(part.name, []).extend(pd.read_parquet(part)["uri"])
        shards.pop("part-empty.parquet", None)
        assert sorted(u for chunk in shards.values() for u in chunk) == sorted(uris)
        for name, chunk in shards.items():
            assert name == shard_id(chunk, predictor.name, "1")


def test_s3_to_s3_on_spark_resumes_and_reports_broken_files(
        predictor: Predictor, inputs: Path, spark: SparkExecutor, s3_endpoint: str,
        tmp_path: Path) -> None:
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="raw")
    s3.create_bucket(Bucket="processed")
    local = upload(s3, inputs, "raw", "xrays")
    s3.put_object(Bucket="raw", Key="xrays/.cache/x.png", Body=b"hidden: not an input")
    files = Files(s3_endpoint)
    out = "s3://processed/predictions/"

    first = batch_predict(predictor, "s3://raw/xrays/", out, files=files, executor=spark)
    assert (first.total, first.predicted, first.failed) == (GOOD_FILES + len(BAD), GOOD_FILES,
                                                           len(BAD))
    preds, errors = tables(out, files)
    uris = [u for u in local if not u.endswith("README.txt")]
    _exactly_once(preds, errors, uris)
    assert {u.rsplit("/", 1)[1] for u in errors["uri"]} == BAD
    expected = direct(predictor.model, [local[u].read_bytes() for u in preds["uri"]])
    np.testing.assert_allclose(probs(preds, predictor.model), expected, atol=1e-5)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="processed")["Contents"]]
    assert all(k.startswith(("predictions/predictions/part-", "predictions/errors/part-"))
               and k.endswith(".parquet") for k in keys), keys

    # New files arrive: a re-run predicts only them, and tries the broken ones again.
    new = tmp_path / "new"
    new.mkdir()
    for src in sorted(XRAYS.glob("*.png"))[:2]:
        (new / f"later_{src.name}").write_bytes(src.read_bytes())
    local |= upload(s3, new, "raw", "xrays/later")
    again = batch_predict(predictor, "s3://raw/xrays/", out, files=files, executor=spark)
    assert (again.skipped, again.predicted, again.failed) == (GOOD_FILES, 2, len(BAD))
    preds, errors = tables(out, files)
    _exactly_once(preds, errors, [u for u in local if not u.endswith("README.txt")])
    assert {u.rsplit("/", 1)[1] for u in errors["uri"]} == BAD  # one row each, not two

    nothing_left = batch_predict(predictor, "s3://raw/xrays/", out, files=files, executor=spark)
    assert (nothing_left.skipped, nothing_left.predicted) == (GOOD_FILES + 2, 0)


def test_a_driver_killed_mid_job_resumes_with_every_file_once(
        trained_project: TrainedProject, predictor: Predictor, spark: SparkExecutor,
        s3_endpoint: str, tmp_path: Path) -> None:
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket="kill-in")
    s3.create_bucket(Bucket="kill-out")
    local = upload(s3, many_pngs(tmp_path / "pngs", 80), "kill-in", "scans")
    out = "s3://kill-out/preds/"
    # Partitions of 2 files: 40 tasks, so that the driver dies with most of them not run.
    log = tmp_path / "driver.log"
    with log.open("wb") as output:  # a file, not a pipe nobody reads while Spark logs
        driver = subprocess.Popen(
            [MEDOPS, "batch-predict", "s3://kill-in/scans/", "--out", out, "--executor",
             "spark", "--master", "local[2]", "--model", f"{predictor.name}/1", "--chunk-size",
             "2", "--batch-size", "2", "--endpoint-url", s3_endpoint, "-C",
             str(trained_project.project.root), "--json"],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        written = _wait_for_parts(s3, "kill-out", "preds/predictions/", driver, log,
                                  timeout=180)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        _wait_group_gone(driver.pid)  # its JVM and Python workers end with it
    finally:
        _kill_group(driver.pid)
    assert driver.returncode == -signal.SIGKILL
    files = Files(s3_endpoint)
    before, _ = tables(out, files)
    assert 0 < len(before) < len(local), f"{len(before)} of {len(local)}: not mid-job"
    assert written >= 1

    summary = batch_predict(predictor, "s3://kill-in/scans/", out, files=files, executor=spark,
                            chunk_size=16)
    assert summary.skipped == len(before)
    assert summary.predicted == len(local) - len(before) and summary.failed == 0
    preds, errors = tables(out, files)
    _exactly_once(preds, errors, list(local))
    expected = direct(predictor.model, [local[u].read_bytes() for u in preds["uri"]])
    np.testing.assert_allclose(probs(preds, predictor.model), expected, atol=1e-5)


def _wait_for_parts(s3: object, bucket: str, prefix: str, process: subprocess.Popen[bytes],
                    log: Path, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)  # type: ignore[attr-defined]
        parts = [o for o in listed.get("Contents", []) if "/part-" in o["Key"]]
        if parts:
            return len(parts)
        if process.poll() is not None:
            raise AssertionError(f"the driver ended ({process.returncode}) before writing a "
                                 f"part: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no part file under s3://{bucket}/{prefix} within {timeout} s")


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of the killed driver (group {pgid}) still run after "
                         f"{timeout} s")


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def test_a_multilabel_txv_model_on_spark_equals_local(tmp_path: Path,
                                                      spark: SparkExecutor) -> None:
    pytest.importorskip("torchxrayvision", reason="the txv extra is not installed")
    from medops.api import Session
    from medops.project import Project
    from tests.train.txv_files import write_weights

    name = "densenet121-res224-all"
    Project.init(tmp_path / "proj", name="xray")
    session = Session(Project.load(tmp_path / "proj"))
    session.project.weights_store.add(write_weights(name, tmp_path / "downloads"))
    imported = session.import_model(f"txv:{name}")
    model = session.predictor(f"{imported.name}/{imported.version}", batch_size=4)
    xrays = tmp_path / "xrays"
    xrays.mkdir()
    for src in sorted(XRAYS.glob("*.*"))[:6]:  # real PNG, JPEG and DICOM (one MONOCHROME1)
        (xrays / src.name).write_bytes(src.read_bytes())
    (xrays / "cut.png").write_bytes((XRAYS / "00000001_000.png").read_bytes()[:500])

    files = Files()
    local = batch_predict(model, str(xrays), str(tmp_path / "local") + "/")
    on_spark = batch_predict(model, str(xrays), str(tmp_path / "spark") + "/", executor=spark)
    assert (on_spark.predicted, on_spark.failed) == (local.predicted, local.failed) == (6, 1)
    spark_preds, spark_errors = tables(str(tmp_path / "spark"), files)
    local_preds, _ = tables(str(tmp_path / "local"), files)
    assert list(spark_preds.columns) == ["uri", *(f"p_{f}" for f in imported.findings),
                                         "label", "findings", "model", "version"]
    assert len(imported.findings) == 18
    np.testing.assert_allclose(probs(spark_preds, model.model), probs(local_preds, model.model),
                               atol=1e-5)
    assert list(spark_preds["findings"]) == list(local_preds["findings"])
    # a finding is positive at its TorchXRayVision operating point
    for _, row in spark_preds.iterrows():
        positive = [f for f in imported.findings
                    if row[f"p_{f}"] >= imported.thresholds[f]]
        assert row["findings"] == "|".join(positive)
    assert list(spark_errors["uri"]) == [str(xrays / "cut.png")]


# -- what a user meets when something is wrong ----------------------------------------------


def test_another_models_output_is_refused_with_the_way_on(
        trained_project: TrainedProject, predictor: Predictor, inputs: Path,
        spark: SparkExecutor, tmp_path: Path) -> None:
    out = str(tmp_path / "out") + "/"
    batch_predict(predictor, str(inputs / "png"), out)
    other = Predictor.from_registry(trained_project.new_model("batch-other", 1),
                                    ModelRef("batch-other", version="1"))
    for executor in (None, spark):
        with pytest.raises(ConfigError) as info:
            batch_predict(other, str(inputs), out, executor=executor)
        message = str(info.value)
        assert f"already holds predictions of {predictor.name} v1, not batch-other v1" in message
        assert "another --out" in message and f"--model {predictor.name}/1" in message
    with pytest.raises(ConfigError, match=r"writes a folder .* --out .*preds/"):
        batch_predict(predictor, str(inputs), str(tmp_path / "preds.parquet"), executor=spark)


def test_missing_model_and_unreadable_sources_are_clear(
        trained_project: TrainedProject, predictor: Predictor, s3_endpoint: str,
        spark: SparkExecutor, tmp_path: Path) -> None:
    registry = trained_project.project.registry
    with pytest.raises(NotFoundError, match="no version '99'"):
        Predictor.from_registry(registry, ModelRef(registry.name, version="99"))
    from medops.registry import ModelRegistry

    nowhere = ModelRegistry(registry.client, "no-such-model", tmp_path / "models")
    with pytest.raises(NotFoundError, match=rf"no registered model named 'no-such-model'; "
                                            rf"registered: .*{registry.name}"):
        Predictor.from_registry(nowhere, ModelRef("no-such-model", alias="champion"))

    files = Files(s3_endpoint)
    s3_client(s3_endpoint).create_bucket(Bucket="exists")
    with pytest.raises(ConfigError, match=r"cannot read the batch's source s3://nope/x/: "
                                          r".*NoSuchBucket.*check the bucket"):
        batch_predict(predictor, "s3://nope/x/", str(tmp_path / "o") + "/", files=files,
                      executor=spark)
    with pytest.raises(ConfigError, match=r"--out s3://missing-bucket/p/: cannot reach the "
                                          r"bucket 'missing-bucket'.*create it"):
        batch_predict(predictor, "s3://exists/x/", "s3://missing-bucket/p/", files=files,
                      executor=spark)
    with pytest.raises(ConfigError, match="neither a folder"):
        batch_predict(predictor, str(tmp_path / "missing"), str(tmp_path / "o") + "/",
                      executor=spark)


def test_cli_options_and_their_errors(trained_project: TrainedProject, inputs: Path,
                                      tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app

    root = str(trained_project.project.root)

    def medops(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["batch-predict", *args, "-C", root])
        return result.exit_code, " ".join(result.output.split())  # rich wraps long lines

    result = CliRunner().invoke(app, ["batch-predict", str(inputs / "bad"), "--out",
                                      str(tmp_path / "o") + "/", "--executor", "local",
                                      "--model", "trained-classifier/1", "--json", "-C", root])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["failed"]) == (len(BAD), len(BAD))
    assert len(pd.read_parquet(tmp_path / "o" / "errors")) == len(BAD)

    model = ["--model", "trained-classifier/1"]
    refused = [
        (["--executor", "spark", "--out", str(tmp_path / "p.parquet")], 2,
         "writes a folder of Parquet part files; name a folder"),
        (["--executor", "dask", "--out", str(tmp_path / "o2/")], 2,
         "--executor 'dask': expected one of local, spark"),
        (["--executor", "local", "--master", "local[2]", "--out", str(tmp_path / "o3/")], 2,
         "drop --master or use --executor spark"),
        ([*model, "--master", "spark://127.0.0.1:1", "--out", str(tmp_path / "o4/")], 1,
         "the Spark master spark://127.0.0.1:1 does not answer"),
        (["--model", "nothing-like-it/1", "--out", str(tmp_path / "o5/")], 4,
         "no registered model named 'nothing-like-it'"),
        ([*model, "--out", str(tmp_path / "o"), "--format", "csv"], 2,
         "is a folder, which holds Parquet tables"),
    ]
    for args, expected_code, message in refused:
        code, output = medops(str(inputs), *args)
        assert message in output, (args, output)
        assert code == expected_code, (args, code, output)
