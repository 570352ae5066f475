"""EventBridge events as the AWS services emit them (the shapes of the AWS user guides), as an
SQS target receives them: the event's JSON is the message body."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pydicom
from pydicom.encaps import generate_frames

ACCOUNT = "111122223333"
REGION = "us-west-2"


def envelope(source: str, detail_type: str, detail: dict[str, Any],
             resources: list[str] | None = None) -> dict[str, Any]:
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type,
            "source": source, "account": ACCOUNT, "time": "2026-03-14T00:01:00Z",
            "region": REGION, "resources": resources or [], "detail": detail}


def image_set_event(datastore: str, image_set_id: str, version: str = "1",
                    detail_type: str = "Image Set Created") -> dict[str, Any]:
    """HealthImaging developer guide, "Image Set Created" (and Updated)."""
    return envelope("aws.medical-imaging", detail_type, {
        "imagingVersion": "1.0", "datastoreId": datastore, "imagesetId": image_set_id,
        "imageSetVersion": version, "imageSetState": "ACTIVE",
        "imageSetWorkflowStatus": "CREATED", "isPrimary": True},
        [f"arn:aws:medical-imaging:{REGION}:{ACCOUNT}:datastore/{datastore}"])


def import_job_event(datastore: str, job_id: str) -> dict[str, Any]:
    return envelope("aws.medical-imaging", "Import Job Completed", {
        "imagingVersion": "1.0", "datastoreId": datastore, "jobId": job_id,
        "jobName": "import", "jobStatus": "COMPLETED",
        "inputS3Uri": "s3://in/", "outputS3Uri": "s3://out/"})


def object_created_event(bucket: str, key: str, etag: str, version_id: str | None = None,
                         sequencer: str | None = None, size: int = 0) -> dict[str, Any]:
    """S3 user guide, "Object Created" (EventBridge notifications enabled on the bucket)."""
    obj: dict[str, Any] = {"key": key, "size": size, "etag": etag}
    if version_id is not None:
        obj["version-id"] = version_id
    if sequencer is not None:
        obj["sequencer"] = sequencer
    return envelope("aws.s3", "Object Created", {
        "version": "0", "bucket": {"name": bucket}, "object": obj,
        "request-id": uuid.uuid4().hex[:16].upper(), "requester": ACCOUNT,
        "source-ip-address": "203.0.113.7", "reason": "PutObject"},
        [f"arn:aws:s3:::{bucket}"])


def ecr_push_event(repository: str, digest: str, tag: str | None = "latest",
                   action: str = "PUSH", result: str = "SUCCESS") -> dict[str, Any]:
    """ECR user guide, "Event for a completed image push"."""
    detail: dict[str, Any] = {"result": result, "repository-name": repository,
                              "image-digest": digest, "action-type": action}
    if tag is not None:
        detail["image-tag"] = tag
    return envelope("aws.ecr", "ECR Image Action", detail)


def send(sqs: Any, url: str, *events: dict[str, Any] | str) -> None:
    for event in events:
        sqs.send_message(QueueUrl=url,
                         MessageBody=event if isinstance(event, str) else json.dumps(event))


def waiting(sqs: Any, url: str) -> int:
    """Messages in the queue, visible or not."""
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


def dead_letters(sqs: Any, url: str) -> list[tuple[str, str]]:
    """(body, medops-reason attribute) of every message in a dead-letter queue."""
    out: list[tuple[str, str]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                  MessageAttributeNames=["All"], VisibilityTimeout=60)
        batch = got.get("Messages", [])
        if not batch:
            return out
        out += [(m["Body"], m.get("MessageAttributes", {}).get("medops-reason", {})
                 .get("StringValue", "")) for m in batch]


def stored_image(path: Path) -> tuple[pydicom.Dataset, list[bytes], str]:
    """A file as HealthImaging holds it: header, frames as encoded, the stored syntax."""
    ds = pydicom.dcmread(path)
    n = int(ds.get("NumberOfFrames", 1))
    frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    syntax = str(ds.file_meta.TransferSyntaxUID)
    del ds.PixelData
    return ds, frames, syntax
