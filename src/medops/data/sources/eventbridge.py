"""EventBridge events as they arrive in an SQS queue: the envelope, and the S3 and ECR events.

EventBridge delivers an event to an SQS target as the message body, the event's JSON itself::

    {"version": "0", "id": "...", "detail-type": "Object Created", "source": "aws.s3",
     "account": "111122223333", "time": "2026-01-01T00:00:00Z", "region": "eu-west-1",
     "resources": ["arn:aws:s3:::bucket"], "detail": {...}}

An SNS topic between the rule and the queue wraps it once more (``Type: Notification`` with the
event in ``Message``); :func:`parse_envelope` unwraps that too. Everything that is not such an
event is a :class:`~medops.errors.DataError` whose message says what is wrong, never what the
event held (keys and names may carry PHI).

HealthImaging's events are parsed by :func:`medops.data.sources.healthimaging.
parse_eventbridge_event`, on top of :func:`parse_envelope`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from medops.errors import DataError

#: The envelope's fields EventBridge always sets.
_REQUIRED = ("version", "id", "detail-type", "source", "detail")


@dataclass(frozen=True)
class Envelope:
    """One EventBridge event: who sent it, what kind, and its ``detail``."""

    id: str
    source: str
    detail_type: str
    detail: dict[str, Any]
    time: str | None = None
    region: str | None = None
    account: str | None = None


@dataclass(frozen=True)
class S3ObjectCreated:
    bucket: str
    key: str
    etag: str | None
    version_id: str | None
    sequencer: str | None  # orders the events of one key (S3 event notifications)

    @property
    def order(self) -> str:
        """Later events of one key have greater values: the sequencer, left-padded with zeros
        (AWS: compare sequencers of one key after padding the shorter), else the ETag."""
        return self.sequencer.rjust(32, "0") if self.sequencer else (self.etag or "")


@dataclass(frozen=True)
class EcrImagePushed:
    repository: str
    digest: str
    tag: str | None
    pushed_at: str | None


def parse_envelope(event: dict[str, Any] | str | bytes, *, strict: bool = True) -> Envelope:
    """The EventBridge envelope of ``event`` (a dict, or JSON as SQS or SNS deliver it).

    ``strict``: every field EventBridge always sets must be there (a queue's messages);
    otherwise only ``source`` (events written by hand, in a file).
    """
    if isinstance(event, (str, bytes)):
        try:
            event = json.loads(event)
        except ValueError as exc:
            raise DataError(f"the message is not JSON ({type(exc).__name__}); expected an "
                            "EventBridge event") from exc
    if not isinstance(event, dict):
        raise DataError(f"the message is a JSON {type(event).__name__}, not an EventBridge "
                        "event object")
    if event.get("Type") == "Notification" and "Message" in event:  # SNS fan-out envelope
        return parse_envelope(str(event["Message"]), strict=strict)
    missing = [k for k in (_REQUIRED if strict else ("source",)) if k not in event]
    if missing:
        raise DataError(f"the message is not an EventBridge event: no {', '.join(missing)}")
    detail = event.get("detail")
    if not isinstance(detail, dict):
        if strict:
            raise DataError("the EventBridge event's detail is not an object")
        detail = {}
    return Envelope(id=str(event.get("id", "")), source=str(event["source"]),
                    detail_type=str(event.get("detail-type", "")), detail=detail,
                    time=_opt(event.get("time")), region=_opt(event.get("region")),
                    account=_opt(event.get("account")))


def parse_s3_object_created(env: Envelope) -> S3ObjectCreated:
    """An ``aws.s3`` ``Object Created`` event (EventBridge notifications of a bucket)."""
    _expect(env, "aws.s3", "Object Created")
    bucket = env.detail.get("bucket")
    obj = env.detail.get("object")
    if not isinstance(bucket, dict) or not bucket.get("name"):
        raise DataError("the 'Object Created' event has no detail.bucket.name")
    if not isinstance(obj, dict) or not obj.get("key"):
        raise DataError("the 'Object Created' event has no detail.object.key")
    # EventBridge sends the key URL-encoded, as S3 event notifications do ("a+b" is "a b").
    return S3ObjectCreated(bucket=str(bucket["name"]), key=unquote_plus(str(obj["key"])),
                           etag=_opt(obj.get("etag")), version_id=_opt(obj.get("version-id")),
                           sequencer=_opt(obj.get("sequencer")))


def parse_ecr_push(env: Envelope) -> EcrImagePushed | None:
    """An ``aws.ecr`` ``ECR Image Action`` event; None for an action other than a successful
    PUSH (a DELETE, a failed push), which brings nothing to act on."""
    _expect(env, "aws.ecr", "ECR Image Action")
    d = env.detail
    if d.get("action-type") != "PUSH" or d.get("result") != "SUCCESS":
        return None
    if not d.get("repository-name"):
        raise DataError("the 'ECR Image Action' event has no detail.repository-name")
    if not d.get("image-digest"):
        raise DataError("the 'ECR Image Action' event has no detail.image-digest")
    return EcrImagePushed(repository=str(d["repository-name"]), digest=str(d["image-digest"]),
                          tag=_opt(d.get("image-tag")), pushed_at=env.time)


def _expect(env: Envelope, source: str, detail_type: str) -> None:
    if env.source != source or env.detail_type != detail_type:
        raise DataError(f"expected a {source} {detail_type!r} event, got {env.source} "
                        f"{env.detail_type!r}")


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)
