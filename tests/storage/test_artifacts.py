"""Artifact stores (a folder; S3 on moto's server over real HTTP) and the sync that shares a
project's artifacts between two working folders, as between two machines."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medops.config import parse_config
from medops.config.redact import config_snapshot
from medops.errors import ConfigError, DependencyMissingError, NotFoundError, StoreError
from medops.monitor import CaptureRecord, CaptureStore, Feedback, intensity_stats
from medops.project import Project
from medops.storage.artifact_sync import ArtifactSync
from medops.storage.artifacts import (
    CACHE_FOLDER,
    ArtifactStore,
    LocalArtifactStore,
    open_artifact_store,
    working_folder,
)
from medops.storage.s3_artifacts import S3ArtifactStore
from tests.servers.moto import moto_endpoint

pytest.importorskip("boto3")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 in server mode on a free loopback port: the wire protocol boto3 speaks."""
    with moto_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_endpoint: str) -> None:
    """The endpoint and credentials as a deployment gives them: boto3's own variables."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


def _client(endpoint: str) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(aws_env: None, s3_endpoint: str) -> str:
    name = f"artifacts-{uuid.uuid4().hex[:8]}"
    _client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def artifact_store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return open_artifact_store("shared-root", tmp_path)  # relative: under the project
    return open_artifact_store(f"s3://{request.getfixturevalue('bucket')}/team/proj", tmp_path)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- the stores ----------------------------------------------------------------------------------

def test_files_go_in_and_come_out_unchanged(artifact_store: ArtifactStore,
                                            tmp_path: Path) -> None:
    store, src = artifact_store, tmp_path / "src"
    store.put_file(_write(src / "m.parquet", b"manifest"), "datasets/v1/manifest.parquet")
    store.put_file(_write(src / "c.json", b"{}"), "datasets/v1/classes.json")
    store.put_file(_write(src / "other", b"x" * 10), "datasets/v10/manifest.parquet")

    assert store.exists("datasets/v1/manifest.parquet")
    assert not store.exists("datasets/v1/missing")
    listed = store.list("datasets/v1")  # a folder: not datasets/v10 beside it
    assert [(o.key, o.size) for o in listed] == [("datasets/v1/classes.json", 2),
                                                  ("datasets/v1/manifest.parquet", 8)]
    assert [o.key for o in store.list("datasets/v1/classes.json")] == \
        ["datasets/v1/classes.json"]  # a file's own key
    assert len(store.list()) == 3
    out = store.get_file("datasets/v1/manifest.parquet", tmp_path / "dst" / "m.parquet")
    assert out.read_bytes() == b"manifest"
    assert store.read_bytes("datasets/v10/manifest.parquet") == b"x" * 10
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no work files

    assert store.delete(["datasets/v1/classes.json", "datasets/v1/never-there"]) == 2
    assert [o.key for o in store.list("datasets/v1")] == ["datasets/v1/manifest.parquet"]
    with pytest.raises(NotFoundError, match=r"datasets/v1/classes\.json does not exist"):
        store.get_file("datasets/v1/classes.json", tmp_path / "dst" / "c.json")
    assert not (tmp_path / "dst" / "c.json").exists()


def test_trees_travel_concurrently_with_their_times(artifact_store: ArtifactStore,
                                                   tmp_path: Path) -> None:
    store = artifact_store
    files = [(_write(tmp_path / "a" / f"{i:02d}" / f"{i}.npy", os.urandom(50 + i)),
              f"cache/preprocess/fp/{i:02d}/{i}.npy") for i in range(40)]
    assert store.put_tree(files) == 40
    objects = store.list("cache/preprocess/fp")
    assert len(objects) == 40
    assert store.fetch(objects, tmp_path / "b") == 40
    for (path, key), obj in zip(sorted(files, key=lambda f: f[1]), objects, strict=True):
        copy = tmp_path / "b" / key
        assert copy.read_bytes() == path.read_bytes()
        assert copy.stat().st_mtime == pytest.approx(obj.modified)


def test_keys_cannot_leave_the_root(artifact_store: ArtifactStore, tmp_path: Path) -> None:
    src = _write(tmp_path / "f", b"1")
    for key in ("../escape", "a/../../b", "", "a//b"):
        with pytest.raises(StoreError, match="not a key under the artifact root"):
            artifact_store.put_file(src, key)


def test_a_missing_bucket_says_how_to_fix_it(aws_env: None, tmp_path: Path) -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    store = open_artifact_store(f"s3://{name}/proj", tmp_path)
    with pytest.raises(StoreError, match=rf"the bucket '{name}' of storage.artifacts "
                       rf"\(s3://{name}/proj\) does not exist; fix: create it"):
        store.check()
    with pytest.raises(StoreError, match="does not exist; fix: create it"):
        store.put_file(_write(tmp_path / "f", b"1"), "a/f")
    root = tmp_path / "proj"
    Project.init(root, name="p")
    project = Project.load(root, {"storage.artifacts": f"s3://{name}/proj"})
    assert project.artifacts == root / CACHE_FOLDER  # the working copy needs no bucket
    with pytest.raises(StoreError, match=f"bucket '{name}'"):
        project.artifact_sync  # noqa: B018  (a command needing shared artifacts fails at once)


def test_an_unreachable_endpoint_names_the_variable(monkeypatch: pytest.MonkeyPatch,
                                                    aws_env: None, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    store = S3ArtifactStore.from_environment("s3://b/p")
    store._client.meta.config.retries = {"max_attempts": 1}
    with pytest.raises(StoreError, match=rf"cannot reach the S3 endpoint "
                       rf"http://127\.0\.0\.1:{port} .*fix: check AWS_ENDPOINT_URL"):
        store.check()


def test_unknown_schemes_list_the_known_ones(tmp_path: Path) -> None:
    for call in (lambda: open_artifact_store("gs://bucket/p", tmp_path),
                 lambda: working_folder(tmp_path, "gs://bucket/p")):
        with pytest.raises(ConfigError, match=r"no artifact store for the scheme 'gs' of "
                           r"'gs://bucket/p'; known: a plain path, file://, s3://"):
            call()
    assert isinstance(open_artifact_store(f"file://{tmp_path}/r", tmp_path), LocalArtifactStore)


def test_without_boto3_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # as if it were not installed
    with pytest.raises(DependencyMissingError, match=r"pip install 'medops\[aws\]'"):
        open_artifact_store("s3://bucket/p", tmp_path)


# -- sharing a project's artifacts -----------------------------------------------------------

def _pair(tmp_path: Path, bucket: str) -> tuple[ArtifactSync, ArtifactSync]:
    """Two working copies of one root, as on two machines."""
    uri = f"s3://{bucket}/proj"
    return (ArtifactSync.open(tmp_path / "a", uri, tmp_path / "a" / CACHE_FOLDER),
            ArtifactSync.open(tmp_path / "b", uri, tmp_path / "b" / CACHE_FOLDER))


def test_what_one_folder_publishes_the_other_finds(bucket: str, s3_endpoint: str,
                                                   tmp_path: Path) -> None:
    a, b = _pair(tmp_path, bucket)
    ckpt = a.local / "checkpoints" / "k1"
    _write(ckpt / "last.kept-0001.pt", b"kept 1")
    _write(ckpt / "last.pt", b"epoch 1")
    _write(ckpt / ".last.pt.99.tmp", b"half written")  # work files stay local
    _write(a.local / "capture" / "part-x.tmp", b"half written")
    assert a.publish(ckpt) == 2
    assert a.publish(ckpt) == 0  # nothing changed
    assert a.publish(a.local / "capture") == 0
    keys = sorted(o["Key"] for o in _client(s3_endpoint).list_objects_v2(
        Bucket=bucket)["Contents"])
    assert keys == ["proj/checkpoints/k1/last.kept-0001.pt", "proj/checkpoints/k1/last.pt"]

    there = b.local / "checkpoints" / "k1"
    assert b.ensure_local(there) == there
    assert (there / "last.pt").read_bytes() == b"epoch 1"
    assert b.publish(there) == 0  # fetched files are known to be in the store

    # the next epoch: a kept file replaced, the index rewritten at the same size
    (ckpt / "last.kept-0001.pt").unlink()
    _write(ckpt / "last.kept-0002.pt", b"kept 2")
    os.utime(_write(ckpt / "last.pt", b"epoch 2"), None)
    assert a.publish(ckpt, delete=True) == 2
    assert sorted(o.key for o in a.store.list("checkpoints")) == [  # type: ignore[union-attr]
        "checkpoints/k1/last.kept-0002.pt", "checkpoints/k1/last.pt"]
    past = (there / "last.pt").stat().st_mtime - 60
    os.utime(there / "last.pt", (past, past))  # B's copy is the older one
    b.ensure_local(there)
    assert (there / "last.pt").read_bytes() == b"epoch 2"
    assert (there / "last.kept-0002.pt").read_bytes() == b"kept 2"

    # a new process knows nothing yet: it learns from one listing, uploads nothing again
    fresh = ArtifactSync.open(tmp_path / "a", f"s3://{bucket}/proj", a.local)
    assert fresh.publish(ckpt) == 0
    assert fresh.discard(ckpt) == 2 and not a.store.list("checkpoints")  # type: ignore[union-attr]


def test_immutable_prefixes_are_listed_once_per_process(bucket: str, tmp_path: Path) -> None:
    a, b = _pair(tmp_path, bucket)
    entries = a.local / "cache" / "preprocess" / "fp1"
    for i in range(30):
        _write(entries / f"{i:02x}" / f"h{i}.npy", os.urandom(100))
    assert a.publish(entries) == 30
    there = b.local / "cache" / "preprocess" / "fp1"
    b.ensure_local(there, immutable=True)
    assert len(list(there.rglob("*.npy"))) == 30
    _write(entries / "ff" / "late.npy", b"late")
    a.publish(entries)
    b.ensure_local(there, immutable=True)  # settled: not listed again in this process
    assert not (there / "ff" / "late.npy").exists()
    b.ensure_local(there)
    assert (there / "ff" / "late.npy").read_bytes() == b"late"


def test_reports_are_named_for_other_machines(bucket: str, tmp_path: Path) -> None:
    a, b = _pair(tmp_path, bucket)
    report = _write(a.local / "monitor" / "m" / "v1" / "report-1.html", b"<html>drift</html>")
    a.publish(report)
    location = a.location(report)
    assert location == f"s3://{bucket}/proj/monitor/m/v1/report-1.html"
    assert b.fetch_report(location).read_bytes() == b"<html>drift</html>"
    with pytest.raises(NotFoundError, match=r"report .* not found"):
        b.fetch_report(f"s3://{bucket}/proj/monitor/m/v1/report-2.html")
    with pytest.raises(StoreError, match="not a key under the artifact root"):
        b.fetch_report(f"s3://{bucket}/proj/../secrets")


def test_a_local_root_shares_nothing_and_costs_nothing(tmp_path: Path) -> None:
    sync = ArtifactSync.open(tmp_path, ".medops/artifacts", tmp_path / ".medops" / "artifacts")
    path = _write(sync.local / "datasets" / "v1" / "manifest.parquet", b"m")
    assert not sync.remote
    assert sync.publish(path.parent) == 0 and sync.discard(path.parent) == 0
    assert sync.ensure_local(path.parent) == path.parent
    assert sync.location(path) == str(path) and sync.fetch_report(str(path)) == path


# -- the capture store across machines ---------------------------------------------------------

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def _record(request_id: str, t: datetime) -> CaptureRecord:
    x = np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    return CaptureRecord(
        request_id=request_id, image=0, time=t, model_name="m", model_version="3",
        predicted="a", classes=["a", "b"], probabilities=[0.7, 0.3], input_format="png",
        height=8, width=8, stats={**intensity_stats(x, "pre"), **intensity_stats(x, "raw")},
        embedding=[0.5, -1.0])


def test_a_monitor_elsewhere_reads_what_serving_captured(bucket: str, s3_endpoint: str,
                                                         tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    serving, monitor = (CaptureStore.under(s) for s in _pair(tmp_path, bucket))
    serving.append([_record("r1", T0), _record("r2", T0 + timedelta(days=1))])
    window = monitor.read(T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert list(window["request_id"]) == ["r1"]  # only the window's day was fetched
    assert list(monitor.read()["request_id"]) == ["r1", "r2"]
    monitor.add_feedback([Feedback("r1", "b", time=T0)])
    assert list(serving.read()["label"].fillna("-")) == ["b", "-"]

    # the store goes away: the rows are on disk and go up with the next write, once
    s3 = _client(s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})
    s3.delete_bucket(Bucket=bucket)
    with caplog.at_level(logging.WARNING, logger="medops.monitor.capture"):
        serving.append([_record("r3", T0)])
    assert "1 capture file(s) not uploaded yet" in caplog.text
    s3.create_bucket(Bucket=bucket)
    serving.append([_record("r4", T0)])
    shared = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(shared) == 2 and all(k.startswith("proj/capture/requests/date=2026-03-01/")
                                    for k in shared)
    assert len(serving.read(T0, T0 + timedelta(seconds=1))) == 3  # nothing written twice


# -- credentials stay out of medops.yaml and out of what runs record ----------------------

@pytest.mark.parametrize(("key", "uri", "fix"), [
    ("state", "postgresql+psycopg://ana:pw-123@db:5432/medops", "PGPASSWORD"),
    ("state", "postgresql+psycopg://ana@db/medops?password=pw-123", "~/.pgpass"),
    ("tracking", "https://ana:pw-123@mlflow.example.org", "MLFLOW_TRACKING_PASSWORD"),
    ("artifacts", "s3://AKIAX:pw-123@bucket/proj", "AWS_SECRET_ACCESS_KEY"),
])
def test_a_password_in_a_storage_uri_is_refused(key: str, uri: str, fix: str) -> None:
    with pytest.raises(ConfigError, match=rf"storage\.{key}: a credential is written into the "
                       rf"URI .*{fix}") as err:
        parse_config({"project": "p", "storage": {key: uri}})
    assert "pw-123" not in str(err.value) and "***" in str(err.value)


def test_run_snapshots_mask_notification_urls() -> None:
    cfg = parse_config({"project": "p", "notify": {
        "urls": ["slack://T000/B000/tok-123", "mailto://ana:pw-123@example.org"]}})
    snapshot = config_snapshot(cfg)
    assert snapshot["notify"]["urls"] == ["slack://***", "mailto://***"]
    assert "tok-123" not in str(snapshot) and "pw-123" not in str(snapshot)
    assert parse_config(snapshot).project == "p"  # a resumed run still reads it
