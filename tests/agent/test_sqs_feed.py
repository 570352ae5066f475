"""A real `medops agent` reading the SQS feed of cloud events (moto's SQS and S3, the local
HealthImaging server), killed with SIGKILL in the middle of a batch and started again: every
import happens exactly once, every push is announced once, the malformed message is reported
and dead-lettered, and the queue ends empty."""

from __future__ import annotations

import io
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")

from medops.storage import EventKind, StateStore
from tests.agent.conftest import AgentProcess, make_agent_project, wait_for
from tests.servers.cloud_events import (
    dead_letters,
    ecr_push_event,
    image_set_event,
    object_created_event,
    send,
    stored_image,
    waiting,
)
from tests.servers.healthimaging import FakeHealthImaging, running_healthimaging
from tests.servers.moto import moto_endpoint

DATASTORE = "9f8e7d6c5b4a49388271605f4e3d2c1b"
OBJECTS = 60  # S3 objects: enough that the batch is still being ingested when it is killed


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
          ) -> Iterator[tuple[str, tuple[str, FakeHealthImaging]]]:
    """moto and the HealthImaging server; the agent's credentials come from the environment."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-west-2", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_CONFIG_FILE": str(tmp_path / "none"),
                       "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    with moto_endpoint() as moto, running_healthimaging() as ahi:
        yield moto, ahi


def _png(i: int) -> bytes:
    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    pixels = (np.arange(32 * 32).reshape(32, 32) * (i + 1)) % 251
    Image.fromarray(pixels.astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def _feed_events(root: Path) -> dict[str, list[Any]]:
    state = StateStore(f"sqlite:///{root / '.medops' / 'medops.db'}")
    try:
        arrived = [e for e in state.event_log(EventKind.DATA_ARRIVED, limit=1000)
                   if e.payload.get("source") == "cloud"]
        return {"arrived": arrived, "pushed": state.event_log(EventKind.IMAGE_PUSHED, 1000),
                "items": state.items(source="cloud")}
    finally:
        state.close()


def _landed(root: Path) -> int:
    folder = root / ".medops" / "landing" / "cloud"
    return sum(1 for _ in folder.glob("*.*")) if folder.is_dir() else 0


@pytest.fixture
def agents() -> Iterator[Callable[[Path], AgentProcess]]:
    """`medops agent` processes, not waited for: sources are polled as soon as it is ready,
    long before the run processes are warm."""
    started: list[AgentProcess] = []

    def start(root: Path) -> AgentProcess:
        agent = AgentProcess(root)
        started.append(agent)
        agent.launch("agent", "-C", str(root))
        return agent

    yield start
    for agent in started:
        agent.cleanup()


def test_kill_9_mid_batch_loses_nothing_and_imports_nothing_twice(
        tmp_path: Path, cloud: tuple[str, tuple[str, FakeHealthImaging]], shared_data: Path,
        agents: Callable[[Path], AgentProcess]) -> None:
    import boto3

    moto, (ahi, fake) = cloud
    sqs = boto3.client("sqs", endpoint_url=moto, region_name="us-west-2")
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    tag = uuid.uuid4().hex[:8]
    url = sqs.create_queue(QueueName=f"events-{tag}")["QueueUrl"]
    dlq = sqs.create_queue(QueueName=f"dead-{tag}")["QueueUrl"]
    bucket = f"raw-{tag}"
    s3.create_bucket(Bucket=bucket)
    image_sets = [fake.add_image_set(DATASTORE, [stored_image(
        shared_data / "dicom" / "htj2k" / name)]) for name in ("NM1_JPH.dcm", "CT2_JPH.dcm")]
    messages: list[dict[str, Any] | str] = [image_set_event(DATASTORE, i) for i in image_sets]
    for i in range(OBJECTS):
        key = f"incoming/{'normal' if i % 2 else 'pneumonia'}/{i:03d}.png"
        etag = str(s3.put_object(Bucket=bucket, Key=key, Body=_png(i))["ETag"]).strip('"')
        messages.append(object_created_event(bucket, key, etag, sequencer=f"{i + 1:016X}"))
    digests = [f"sha256:{n:064x}" for n in (1, 2)]
    messages += [ecr_push_event("medops-train", d, f"v{n}") for n, d in enumerate(digests)]
    messages += messages[:5] + messages[-2:]  # EventBridge delivers some twice
    messages.append("{malformed")
    send(sqs, url, *messages)

    root = make_agent_project(tmp_path / "p", settings={
        "agent.source_poll": 0.5,  # triggers: run.requested only, so nothing trains
        "data.sources": {"cloud": {
            "kind": "sqs", "queue_url": url, "dead_letter_queue_url": dlq, "endpoint_url": moto,
            "region": "us-west-2", "visibility_s": 2,
            "healthimaging": {"datastore_id": DATASTORE, "endpoint_url": ahi},
            "s3": {"uri": f"s3://{bucket}/incoming/", "endpoint_url": moto},
            "ecr": {"repositories": ["medops-train"]}}}})
    agent = agents(root)
    deadline = time.monotonic() + 60
    while _landed(root) < 3:  # a tight loop: the whole batch takes a second or two
        assert time.monotonic() < deadline and agent.proc and agent.proc.poll() is None, \
            agent.tail()
        time.sleep(0.005)
    agent.kill()
    landed_at_kill = _landed(root)
    assert landed_at_kill < OBJECTS, "the batch was done before the kill; nothing was tested"

    restarted = agent = agents(root)
    expected_items = OBJECTS + len(image_sets)

    def done() -> bool:
        found = _feed_events(root)
        return (len(found["items"]) >= expected_items and len(found["pushed"]) >= 2
                and waiting(sqs, url) == 0)

    wait_for(done, 60, "every import and an empty queue", proc=agent.proc)
    time.sleep(1.5)  # a few more polls: anything twice would show now
    assert agent.terminate(timeout=30) == 0
    found = _feed_events(root)
    assert len(found["items"]) == expected_items
    assert len({i.content_hash for i in found["items"]}) == expected_items
    assert len(found["arrived"]) == expected_items  # one data.arrived per import, by its key
    assert len({e.idempotency_key for e in found["arrived"]}) == expected_items
    assert sorted(e.payload["digest"] for e in found["pushed"]) == digests
    assert waiting(sqs, url) == 0
    [(body, reason)] = dead_letters(sqs, dlq)
    assert body == "{malformed" and "not JSON" in reason
    # The batch killed mid-way came back; what it had stored was skipped, not fetched again.
    skipped = re.findall(r"ingested cloud: .* (\d+) already ingested", restarted.text())
    assert sum(int(n) for n in skipped) >= 2, restarted.text()
    log = "\n".join(p.read_text(errors="replace") for p in root.glob("agent-*.log"))
    assert "refused (sent to the dead-letter queue): the message is not JSON" in log
    assert json.dumps(messages[0]) not in log  # message bodies are never logged
