"""Monitoring on another machine: `medops serve` captures in one project folder, `run_monitor`
runs in another, both with ``storage.artifacts`` on S3 (moto's server) and the same state and
tracking stores. The monitor finds the captures, and the report it writes is found again from a
third folder through the location stored with the result."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from medops.monitor import CaptureStore
from medops.monitor.run import MonitorStatus, run_monitor
from medops.project import Project
from medops.storage import sqlalchemy_url
from medops.storage.monitoring import MonitorResults
from tests.servers.moto import s3_bucket

from .conftest import Monitored, png, shifted

pytest.importorskip("boto3")


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    with s3_bucket(monkeypatch, tmp_path, "capture") as (name, _):
        yield name


def _machine(root: Path, monitored: Monitored, bucket: str) -> Project:
    """Another folder with the monitored project's state, tracking and monitor settings, and
    the shared artifact root."""
    source = monitored.project
    Project.init(root, name=source.config.project)
    storage = {"storage.state": sqlalchemy_url(source.root, source.config.storage.state),
               "storage.tracking": sqlalchemy_url(source.root, source.config.storage.tracking),
               "storage.artifacts": f"s3://{bucket}/retina"}
    monitor = source.config.monitor.model_dump(mode="json")
    return Project.load(root, {**storage, "monitor": monitor})


def test_the_monitor_elsewhere_sees_served_traffic_and_shares_its_report(
        monitored: Monitored, retina: dict[str, np.ndarray], bucket: str,
        tmp_path: Path) -> None:
    serving = _machine(tmp_path / "serving", monitored, bucket)
    watching = _machine(tmp_path / "watching", monitored, bucket)
    start = datetime(2026, 4, 2, 8, 0, tzinfo=timezone.utc)
    blobs = [png(shifted(img)) for img in retina["train_images"][-80:]]
    records = monitored.world.records(blobs, start, monitored.model, monitored.version, "far")
    CaptureStore.under(serving.artifact_sync).append(records)

    result = run_monitor(watching, window="2h", now=start + timedelta(hours=1))
    assert result.status is MonitorStatus.DRIFT and result.n_current == 80
    assert result.report is not None and result.report.is_relative_to(watching.artifacts)
    row = next(r for r in MonitorResults(watching.state.db).history(
        monitored.model, monitored.version) if r.window_end == result.window_end)
    assert row.report == f"s3://{bucket}/retina/{result.report.relative_to(watching.artifacts)}"

    elsewhere = _machine(tmp_path / "dashboard", monitored, bucket)
    copy = elsewhere.artifact_sync.fetch_report(str(row.report))
    assert copy.is_relative_to(elsewhere.artifacts)
    assert copy.read_text() == result.report.read_text()
    for project in (serving, watching, elsewhere):
        project.close()
