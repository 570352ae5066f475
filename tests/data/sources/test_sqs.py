"""The SQS feed of cloud events against moto's SQS and S3 servers and the local HealthImaging
server, with messages shaped as EventBridge delivers them to an SQS target."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")

from medops.config import parse_config
from medops.config.sources import SqsSourceConfig
from medops.data.ingest import IngestReport, IngestSettings, ingest_remote
from medops.data.sources.factory import make_remote_source
from medops.data.sources.sqs import SqsEventFeed
from medops.errors import ConfigError, DataError
from medops.storage import EventKind, StateStore
from tests.servers.cloud_events import (
    dead_letters,
    ecr_push_event,
    image_set_event,
    import_job_event,
    object_created_event,
    send,
    stored_image,
    waiting,
)
from tests.servers.healthimaging import FakeHealthImaging, running_healthimaging

pytestmark = pytest.mark.usefixtures("aws_credentials")

DATASTORE = "5d4c1f6e2a7b4c0f9e8d7c6b5a4f3e2d"
REPO = "medops-train"
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def healthimaging() -> Iterator[tuple[str, FakeHealthImaging]]:
    with running_healthimaging() as running:
        yield running


class Cloud:
    """One test's queue, dead-letter queue and bucket, and a feed over them."""

    def __init__(self, moto: str, ahi: str, tmp: Path, state_url: str) -> None:
        import boto3

        self.moto, self.ahi, self.tmp = moto, ahi, tmp
        self.sqs = boto3.client("sqs", endpoint_url=moto, region_name="us-west-2")
        self.s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
        tag = uuid.uuid4().hex[:8]
        self.url = self.sqs.create_queue(QueueName=f"events-{tag}")["QueueUrl"]
        self.dlq = self.sqs.create_queue(QueueName=f"dead-{tag}")["QueueUrl"]
        self.bucket = f"raw-{tag}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.state = StateStore(state_url)
        self.settings = IngestSettings.from_config(parse_config({"project": "p"}).data,
                                                   b"sqs-feed-test-secret-0123456789")

    def config(self, **extra: Any) -> SqsSourceConfig:
        raw: dict[str, Any] = {
            "kind": "sqs", "queue_url": self.url, "dead_letter_queue_url": self.dlq,
            "endpoint_url": self.moto, "region": "us-west-2",
            "healthimaging": {"datastore_id": DATASTORE, "endpoint_url": self.ahi},
            "s3": {"uri": f"s3://{self.bucket}/incoming/", "endpoint_url": self.moto},
            "ecr": {"repositories": [REPO]}, **extra}
        return SqsSourceConfig.model_validate({k: v for k, v in raw.items() if v is not None})

    def feed(self, **extra: Any) -> SqsEventFeed:
        feed = make_remote_source("cloud", self.config(**extra))
        assert isinstance(feed, SqsEventFeed)
        return feed

    def ingest(self, **extra: Any) -> IngestReport:
        return ingest_remote(self.feed(**extra), self.state, self.tmp / "landing", self.settings)

    def put(self, key: str, data: bytes) -> str:
        return str(self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)["ETag"]).strip('"')

    def events(self, kind: str) -> list[Any]:
        return self.state.event_log(kind, limit=1000)


@pytest.fixture
def cloud(moto_endpoint: str, healthimaging: tuple[str, FakeHealthImaging],
          tmp_path: Path) -> Iterator[Cloud]:
    cloud = Cloud(moto_endpoint, healthimaging[0], tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    yield cloud
    cloud.state.close()


@pytest.fixture
def cloud_on_each_store(moto_endpoint: str, healthimaging: tuple[str, FakeHealthImaging],
                        tmp_path: Path, state_url: str) -> Iterator[Cloud]:
    """The same, on SQLite and on PostgreSQL (where the stored events are looked up by key)."""
    cloud = Cloud(moto_endpoint, healthimaging[0], tmp_path, state_url)
    yield cloud
    cloud.state.close()


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray((np.arange(32 * 32) % 251).astype(np.uint8).reshape(32, 32)).save(out, "PNG")
    return out.getvalue()


def _image_set(fake: FakeHealthImaging, shared_data: Path, name: str = "NM1_JPH.dcm") -> str:
    return fake.add_image_set(DATASTORE, [stored_image(shared_data / "dicom" / "htj2k" / name)])


def test_healthimaging_s3_and_ecr_messages(cloud: Cloud, shared_data: Path,
                                           healthimaging: tuple[str, FakeHealthImaging]) -> None:
    image_set = _image_set(healthimaging[1], shared_data)
    etag = cloud.put("incoming/normal/a.png", _png())
    send(cloud.sqs, cloud.url, image_set_event(DATASTORE, image_set),
         object_created_event(cloud.bucket, "incoming/normal/a.png", etag, sequencer="0A1"),
         ecr_push_event(REPO, DIGEST, "v3"),
         ecr_push_event(REPO, DIGEST, None, action="DELETE"))  # nothing to act on
    report = cloud.ingest()
    assert (report.new, report.rejected, report.quarantined) == (2, 0, 0)
    items = cloud.state.items(source="cloud")
    assert sorted(i.label or "" for i in items) == ["", "normal"]
    assert len(cloud.events(EventKind.DATA_ARRIVED)) == 2  # one per import
    [pushed] = cloud.events(EventKind.IMAGE_PUSHED)
    assert pushed.payload == {"repository": REPO, "tag": "v3", "digest": DIGEST,
                              "pushed_at": "2026-03-14T00:01:00Z"}
    key = hashlib.sha256(f"{REPO}\0{DIGEST}".encode()).hexdigest()[:40]
    assert pushed.idempotency_key == f"image.pushed:{key}"
    assert waiting(cloud.sqs, cloud.url) == 4  # stored, not yet deleted
    again = cloud.ingest()  # deletes the stored batch, finds nothing
    assert (again.new, again.events) == (0, 0)
    assert waiting(cloud.sqs, cloud.url) == 0


def test_an_import_job_imports_the_image_sets_of_its_window(
        cloud: Cloud, shared_data: Path, healthimaging: tuple[str, FakeHealthImaging]) -> None:
    from datetime import datetime, timedelta, timezone

    from tests.servers.healthimaging import ImportJob

    fake = healthimaging[1]
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    _image_set(fake, shared_data, "CT2_JPH.dcm")
    job = uuid.uuid4().hex
    fake.jobs[job] = ImportJob(job, start, datetime.now(timezone.utc))
    send(cloud.sqs, cloud.url, import_job_event(DATASTORE, job), import_job_event(DATASTORE, job))
    assert cloud.ingest().new >= 1
    assert cloud.ingest().events == 0  # the duplicate job event was one of the batch


def test_duplicates_are_imported_and_announced_once(
        cloud_on_each_store: Cloud, shared_data: Path,
        healthimaging: tuple[str, FakeHealthImaging]) -> None:
    cloud = cloud_on_each_store
    image_set = _image_set(healthimaging[1], shared_data)
    etag = cloud.put("incoming/b.png", _png())
    messages = [image_set_event(DATASTORE, image_set),
                object_created_event(cloud.bucket, "incoming/b.png", etag, sequencer="0B"),
                ecr_push_event(REPO, DIGEST)]
    send(cloud.sqs, cloud.url, *messages, *messages)  # in one batch
    first = cloud.ingest()
    assert first.new == 2 and first.events == 3
    send(cloud.sqs, cloud.url, *messages)  # after the batch was stored
    later = cloud.ingest()
    assert later.new == 0 and later.events == 0
    # Redelivered after a crash that lost the cursor: the stored events say it was imported.
    send(cloud.sqs, cloud.url, *messages)
    crashed = cloud.feed(visibility_s=1).poll(cloud.state.get_cursor("cloud"))
    assert len(crashed.objects) == 0  # the cursor remembers them: nothing to fetch
    time.sleep(1.5)
    cloud.state.set_cursor("cloud", "")  # even with the cursor lost, nothing is imported twice
    lost = cloud.ingest()
    assert lost.duplicates == 2 and lost.new == 0 and lost.events == 0
    assert len(cloud.events(EventKind.DATA_ARRIVED)) == 2
    assert len(cloud.events(EventKind.IMAGE_PUSHED)) == 1
    assert len(cloud.state.items(source="cloud")) == 2
    cloud.ingest()
    assert waiting(cloud.sqs, cloud.url) == 0


def test_an_older_version_after_a_newer_one_is_not_imported(
        cloud: Cloud, shared_data: Path, healthimaging: tuple[str, FakeHealthImaging]) -> None:
    fake = healthimaging[1]
    image_set = _image_set(fake, shared_data)
    fake.touch(DATASTORE, image_set)
    etag_new = cloud.put("incoming/c.png", _png())
    send(cloud.sqs, cloud.url, image_set_event(DATASTORE, image_set, "2", "Image Set Updated"),
         object_created_event(cloud.bucket, "incoming/c.png", etag_new, sequencer="00A2"))
    assert cloud.ingest().events == 2
    # The older ones arrive late, and out of order inside one batch too.
    send(cloud.sqs, cloud.url, image_set_event(DATASTORE, image_set, "1"),
         object_created_event(cloud.bucket, "incoming/c.png", "0" * 32, sequencer="A1"),
         image_set_event(DATASTORE, image_set, "2", "Image Set Updated"))
    feed = cloud.feed()
    result = feed.poll(cloud.state.get_cursor("cloud"))
    assert result.objects == [] and result.rejected == 0
    # A newer version still is imported (as an update of the same image set).
    send(cloud.sqs, cloud.url, image_set_event(DATASTORE, image_set, "3", "Image Set Updated"),
         image_set_event(DATASTORE, image_set, "1"))
    newer = feed.poll(result.cursor)
    assert [(o.meta["key"], o.version) for o in newer.objects] == [(image_set, "3")]


def test_malformed_messages_are_dead_lettered_with_their_reasons(cloud: Cloud) -> None:
    import json

    no_imageset = image_set_event(DATASTORE, "x")
    del no_imageset["detail"]["imagesetId"]
    ec2 = {"version": "0", "id": "1", "detail-type": "EC2 Instance State-change Notification",
           "source": "aws.ec2", "detail": {"state": "running"}}
    reasons = {  # body -> what its reason says
        "{not json": "not JSON",
        '["a list"]': "not an EventBridge event object",
        '{"source": "aws.s3", "detail": {}}': "no version, id, detail-type",
        json.dumps(ec2): "source 'aws.ec2' are not handled",
        json.dumps(no_imageset): "no detail.imagesetId",
        json.dumps(image_set_event("0" * 32, "x")): "not the configured",
        json.dumps(object_created_event(cloud.bucket, "Doe%5EJane/scan.dcm", "e1")):
            "outside the prefix 'incoming/'",
        json.dumps(object_created_event("another-bucket", "incoming/x.png", "e1")):
            "not the configured",
        json.dumps(ecr_push_event("someone-else", DIGEST)): "not one of",
        json.dumps(ecr_push_event(REPO, "")): "no detail.image-digest",
    }
    send(cloud.sqs, cloud.url, *reasons, ecr_push_event(REPO, DIGEST))
    report = cloud.ingest()
    assert report.rejected == len(reasons) and len(cloud.events(EventKind.IMAGE_PUSHED)) == 1
    dead = dict(dead_letters(cloud.sqs, cloud.dlq))
    assert sorted(dead) == sorted(reasons)
    for body, reason in reasons.items():
        assert reason in dead[body], (body, dead[body])
    assert not any("Doe" in why for why in dead.values())  # keys may hold PHI: never named
    assert waiting(cloud.sqs, cloud.url) == 1  # the good message, deleted by the next poll
    cloud.ingest()
    assert waiting(cloud.sqs, cloud.url) == 0


def test_without_a_dead_letter_url_refusals_stay_for_the_redrive_policy(cloud: Cloud) -> None:
    send(cloud.sqs, cloud.url, "{not json")
    assert cloud.ingest(dead_letter_queue_url=None).rejected == 1
    cloud.ingest(dead_letter_queue_url=None)
    assert waiting(cloud.sqs, cloud.url) == 1 and dead_letters(cloud.sqs, cloud.dlq) == []


def test_a_kind_left_out_of_the_config_is_refused(cloud: Cloud) -> None:
    send(cloud.sqs, cloud.url, ecr_push_event(REPO, DIGEST))
    assert cloud.ingest(ecr=None).rejected == 1
    [(_, why)] = dead_letters(cloud.sqs, cloud.dlq)
    assert "no ecr is configured" in why


def test_cursors_of_another_kind_are_refused(cloud: Cloud) -> None:
    with pytest.raises(DataError, match="not an SQS feed cursor"):
        cloud.feed().poll("sqs:[]")


def test_config_is_strict() -> None:
    base = {"project": "p", "data": {"sources": {"cloud": {
        "kind": "sqs", "queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q"}}}}
    assert parse_config(base).data.sources["cloud"].kind == "sqs"
    bad_url = {"project": "p", "data": {"sources": {"cloud": {"kind": "sqs",
                                                              "queue_url": "medops-events"}}}}
    with pytest.raises(ConfigError, match="queue_url"):
        parse_config(bad_url)
    typo = {"project": "p", "data": {"sources": {"cloud": {
        "kind": "sqs", "queue_url": "https://sqs.eu-west-1.amazonaws.com/1/q",
        "s3": {"uri": "s3://b/p/", "prefix": "x"}}}}}
    with pytest.raises(ConfigError, match="prefix"):
        parse_config(typo)


def test_an_image_set_or_job_that_does_not_exist_never_blocks_the_queue(cloud: Cloud) -> None:
    send(cloud.sqs, cloud.url, image_set_event(DATASTORE, uuid.uuid4().hex),
         import_job_event(DATASTORE, "no-such-job"), ecr_push_event(REPO, DIGEST))
    report = cloud.ingest()
    assert (report.items, report.rejected) == (0, 1)  # the job: refused; the image set: gone
    assert len(cloud.events(EventKind.IMAGE_PUSHED)) == 1
    [(_, why)] = dead_letters(cloud.sqs, cloud.dlq)
    assert "the import job cannot be read" in why
    cloud.ingest()
    assert waiting(cloud.sqs, cloud.url) == 0
