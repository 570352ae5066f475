"""Two project folders, one team setup, as on two machines: the state on PostgreSQL, tracking on
an ``mlflow server`` with basic auth (artifacts proxied to S3), and ``storage.artifacts`` on
S3 (moto's server). ``medops run`` in folder A is stopped during training; ``medops runs
resume`` in folder B, which holds no data and no state of its own, continues from A's
checkpoint with A's manifest and preprocessed arrays; A then loads the model B registered.
No credential reaches the run's records, MLflow or the output of either command."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from medops.config import set_dotted
from medops.demo.synthetic import SyntheticDataset
from medops.project import Project
from medops.storage import RunStatus, StateStore
from medops.storage.artifacts import CACHE_FOLDER
from tests.servers.mlflow import MlflowServer, MotoS3, mlflow_server  # noqa: F401  (fixture)

from .conftest import FAST

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
pytest.importorskip("boto3")

MEDOPS = [sys.executable, "-m", "medops.cli"]


@pytest.fixture
def team(mlflow_server: MlflowServer) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A fresh PostgreSQL state database and bucket, beside the session's MLflow server."""
    from tests.conftest import _postgres_database

    databases = _postgres_database()
    state = next(databases)
    try:
        bucket = f"team-{uuid.uuid4().hex[:8]}"
        mlflow_server.s3.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        yield {"state": state, "s3": mlflow_server.s3, "server": mlflow_server,
               "bucket": bucket, "name": f"shared-{uuid.uuid4().hex[:6]}"}
    finally:
        next(databases, None)  # past its yield: the database is dropped


def _shared(s3: MotoS3, bucket: str, prefix: str, suffix: str) -> list[str]:
    """Keys under ``prefix`` in ``bucket`` ending with ``suffix``."""
    client: Any = s3.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])
            if o["Key"].endswith(suffix)]


#: The project's own network, in its code on every machine: checkpoints of a few kB keep the
#: test about S3 and not about bandwidth.
TINY_NET = """import torch.nn as nn


def build(in_channels, num_classes):
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
"""


def _folder(root: Path, name: str, storage: dict[str, str], secret_hook: str) -> Path:
    """A project folder (code, no data) whose medops.yaml names the shared storage, and a
    webhook whose URL holds a token, as notification URLs do."""
    Project.init(root, name=name)
    (root / "models").mkdir()
    (root / "models" / "tiny.py").write_text(TINY_NET)
    path = root / "medops.yaml"
    raw = yaml.safe_load(path.read_text())
    settings = {**FAST, "model.architecture": "models/tiny.py:build",
                "train.epochs": 8, "train.patience": 8,
                **{f"storage.{k}": v for k, v in storage.items()},
                "notify.urls": [f"json://medops:{secret_hook}@127.0.0.1:9/hook"]}
    for key, value in settings.items():
        set_dotted(raw, key, value)
    path.write_text(yaml.safe_dump(raw))
    return root


def test_a_run_stopped_in_one_folder_resumes_in_another(
        team: dict[str, Any], tmp_path: Path, synthetic_dicom: SyntheticDataset,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    s3, server = team["s3"], team["server"]
    secrets_used = {"aws": f"aws-{secrets.token_hex(8)}", "pg": f"pg-{secrets.token_hex(8)}",
                    "hook": f"hook-{secrets.token_hex(8)}", "mlflow": server.password}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secrets_used["aws"],
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3.endpoint,
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "MLFLOW_TRACKING_USERNAME": server.username,
                "MLFLOW_TRACKING_PASSWORD": server.password,
                "PGPASSWORD": secrets_used["pg"],  # trust auth here: sent, never needed
                "COLUMNS": "200"})
    storage = {"state": team["state"], "tracking": server.url,
               "artifacts": f"s3://{team['bucket']}/chest"}
    a = _folder(tmp_path / "a", team["name"], storage, secrets_used["hook"])
    b = _folder(tmp_path / "b", team["name"], storage, secrets_used["hook"])
    shutil.rmtree(a / "data" / "raw")
    shutil.copytree(synthetic_dicom.root, a / "data" / "raw")

    log_a = tmp_path / "a.log"
    with log_a.open("w") as out:
        proc = subprocess.Popen([*MEDOPS, "run", "-C", str(a)], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _shared(s3, team["bucket"], "chest/checkpoints/", "/last.pt"):
            assert proc.poll() is None, log_a.read_text()
            assert time.monotonic() < deadline, "no checkpoint reached the bucket"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)  # stopped: the run is left resumable
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    state = StateStore(team["state"])
    try:
        stopped = state.list_runs()[0]
        assert stopped.status is RunStatus.INTERRUPTED, log_a.read_text()
        done = {s.name for s in stopped.steps if s.status.value == "succeeded"}
        assert done == {"ingest", "validate", "split", "preprocess"}

        resumed = subprocess.run([*MEDOPS, "runs", "resume", stopped.id, "-C", str(b)], env=env,
                                 capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        record = state.get_run(stopped.id)
    finally:
        state.close()
    assert record.status is RunStatus.SUCCEEDED
    steps = {s.name: s for s in record.steps}
    assert steps["ingest"].attempts == 1  # finished steps were not run again
    assert steps["train"].outputs["resumed_from_epoch"] >= 1  # from A's checkpoint
    assert steps["register"].outputs["version"] == "1"

    # B had no data: the manifest, the preprocessed arrays and the checkpoint came from S3
    work_b = b / CACHE_FOLDER
    version = steps["split"].outputs["dataset_version"]
    assert (work_b / "datasets" / version / "manifest.parquet").is_file()
    fingerprint = steps["preprocess"].outputs["fingerprint"]
    preprocessed = steps["preprocess"].outputs
    assert len(list((work_b / "cache" / "preprocess" / fingerprint).rglob("*.npy"))) == \
        preprocessed["computed"] + preprocessed["cached"]
    assert list(work_b.glob("checkpoints/*/last.pt"))
    assert not any((b / "data" / "raw").iterdir())

    # the experiment lets the server keep artifacts: a model registered from B loads in A,
    # this time with the credentials in MLflow's own file
    home = tmp_path / "home"
    (home / ".mlflow").mkdir(parents=True)
    (home / ".mlflow" / "credentials").write_text(
        f"[mlflow]\nmlflow_tracking_username = {server.username}\n"
        f"mlflow_tracking_password = {server.password}\n")
    monkeypatch.setenv("HOME", str(home))
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    project_a = Project.load(a)
    try:
        client = project_a.tracker.client
        experiment = client.get_experiment(project_a.tracker.experiment_id)
        assert experiment.artifact_location.startswith("mlflow-artifacts:")
        assert project_a.registry.get("1").source.startswith("mlflow-artifacts:")
        loaded = project_a.registry.load("1")
        assert loaded.classes == steps["split"].outputs["classes"]
        assert record.mlflow_run_id is not None
        mlrun = client.get_run(record.mlflow_run_id)
        version_tags = project_a.registry.get("1").tags
    finally:
        project_a.close()

    # no credential in what the run recorded, in MLflow or in what either command printed
    assert record.config["notify"]["urls"] == ["json://***"]
    recorded = json.dumps([record.config, [[s.outputs, s.error] for s in record.steps],
                           mlrun.data.params, mlrun.data.tags, version_tags], default=str)
    printed = log_a.read_text() + resumed.stdout + resumed.stderr
    for name, secret in secrets_used.items():
        assert secret not in recorded, f"the {name} credential is in the run's records"
        assert secret not in printed, f"the {name} credential was printed"
