"""One feed for cloud events: an SQS queue of EventBridge events (``kind: sqs``).

The queue is the one ``medops export aws`` creates, fed by EventBridge rules:

* ``aws.medical-imaging`` image set and ``Import Job Completed`` events of the configured
  datastore become imports of those image sets (through
  :class:`~medops.data.sources.healthimaging.HealthImagingSource`);
* ``aws.s3`` ``Object Created`` events under the configured prefix become imports of those
  objects (through :class:`~medops.data.sources.s3.S3Source`);
* ``aws.ecr`` ``ECR Image Action`` PUSH/SUCCESS events become ``image.pushed`` events with
  payload ``{repository, tag, digest, pushed_at}``, keyed on repository and digest.

Delivery is at-least-once and unordered, so:

* A message is deleted only after what it caused is stored: its receipt handle goes into the
  cursor, which the ingester stores after the items and events, and the next poll deletes the
  handles of the stored cursor. A crash (kill -9) before that leaves the message in the queue;
  it comes back after the visibility timeout.
* The feed's objects are announced one by one (``PollResult.per_object``): each import's
  ``data.arrived`` event is keyed by the image set and its version, or the bucket, key and
  version, so the redelivery of an imported message is skipped by the ingester, and
  ``image.pushed`` is keyed by repository and digest.
* The cursor also remembers the newest version seen of each image set and S3 key (the image
  set version, the S3 sequencer): an older version delivered after a newer one is not imported.

A message the feed cannot use (not JSON, not an EventBridge event, a source it does not handle
or was not configured for, missing fields, an object outside the prefix, another datastore or
repository) is refused: sent to ``dead_letter_queue_url`` with the reason in the
``medops-reason`` message attribute and deleted here, counted in the poll's ``rejected`` and
logged by message id and reason (never its content). Without a dead-letter URL it is left in the
queue, whose redrive policy moves it to the dead-letter queue after ``maxReceiveCount`` receives
(the stack's queue: 5); the reason is then only in the log.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from medops.config.enums import EventKind
from medops.config.sources import (
    HealthImagingSourceConfig,
    S3SourceConfig,
    SqsSourceConfig,
)
from medops.data.sources.eventbridge import (
    Envelope,
    parse_ecr_push,
    parse_envelope,
    parse_s3_object_created,
)
from medops.data.sources.healthimaging import (
    EVENT_SOURCE,
    HealthImagingSource,
    parse_healthimaging,
)
from medops.data.sources.remote import (
    Announcement,
    PollResult,
    RemoteObject,
    pack_cursor,
    unpack_cursor,
)
from medops.data.sources.s3 import S3Source
from medops.data.sources.sqs_queue import EventQueue, make_client
from medops.errors import DataError

log = logging.getLogger(__name__)

_CURSOR_PREFIX = "sqsfeed1:"
_HI, _S3 = "healthimaging", "s3"


@dataclass
class _Cursor:
    handles: list[str] = field(default_factory=list)  # received, their effects stored
    seen: dict[str, str] = field(default_factory=dict)  # identity -> newest order, oldest first

    def encode(self) -> str:
        # not sorted: ``seen`` keeps the oldest first, for :meth:`trim`
        return pack_cursor(_CURSOR_PREFIX, {"handles": self.handles, "seen": self.seen})

    @classmethod
    def decode(cls, text: str | None, where: str) -> _Cursor:
        if not text:
            return cls()
        return unpack_cursor(text, _CURSOR_PREFIX,
                             lambda d: cls(handles=[str(h) for h in d["handles"]],
                                           seen=dict(d["seen"])),
                             where, "an SQS feed cursor", "fix: reset the source's cursor")

    def newer(self, identity: str, order: str) -> bool:
        """Whether ``order`` is newer than what was seen of ``identity``; remembers it if so.
        Orders starting with "=" (an ETag without a sequencer) only differ or not."""
        old = self.seen.get(identity)
        if old is not None and (old == order if "=" in (old[:1], order[:1]) else old >= order):
            return False
        self.seen.pop(identity, None)  # re-inserted last: the newest stay when trimmed
        self.seen[identity] = order
        return True

    def trim(self, keep: int) -> None:
        for identity in list(self.seen)[:max(0, len(self.seen) - keep)]:
            del self.seen[identity]


class SqsEventFeed:
    """The cloud-event feed of ``data.sources.<name>`` (see the module docstring)."""

    def __init__(self, name: str, cfg: SqsSourceConfig) -> None:
        self.name = name
        self.cfg = cfg
        queue_name = cfg.queue_url.rstrip("/").rsplit("/", 1)[-1]
        self._where = f"data.sources.{name} (SQS queue {queue_name})"
        what = f"the SQS feed {name}"
        self._queue = EventQueue(make_client("sqs", cfg.endpoint_url, cfg.region, what),
                                 cfg.queue_url, self._where, wait_s=cfg.wait_s,
                                 visibility_s=cfg.visibility_s,
                                 dead_letter_url=cfg.dead_letter_queue_url)
        self._hi: HealthImagingSource | None = None  # built when an event needs one
        self._s3: S3Source | None = None

    def _healthimaging_source(self) -> HealthImagingSource | None:
        hi = self.cfg.healthimaging
        if self._hi is None and hi is not None:
            self._hi = HealthImagingSource(self.name, HealthImagingSourceConfig(
                kind="healthimaging", datastore_id=hi.datastore_id,
                region=hi.region or self.cfg.region, endpoint_url=hi.endpoint_url))
        return self._hi

    def _s3_source(self) -> S3Source | None:
        s3 = self.cfg.s3
        if self._s3 is None and s3 is not None:
            self._s3 = S3Source(self.name, S3SourceConfig(
                kind="s3", uri=s3.uri, region=s3.region or self.cfg.region,
                endpoint_url=s3.endpoint_url, labels_from_folders=s3.labels_from_folders))
        return self._s3

    # -- RemoteSource ---------------------------------------------------------------------
    def poll(self, cursor: str | None) -> PollResult:
        state = _Cursor.decode(cursor, self._where)
        self._queue.delete(state.handles)  # stored with the cursor: their effects are stored
        messages, more = self._queue.receive()
        state.handles = []
        objects: dict[str, RemoteObject] = {}
        notes: dict[str, Announcement] = {}
        rejected = stale = 0
        for message in messages:
            try:
                found = self._read(message, state)
            except DataError as exc:
                rejected += 1
                self._refuse(message, str(exc))
                continue
            state.handles.append(message["ReceiptHandle"])
            if isinstance(found, Announcement):
                notes[found.key] = found
            elif found:
                objects.update((o.key, o) for o in found)
            else:
                stale += 1
        if stale:
            log.info("%s: %d message(s) with nothing new (a duplicate, an older version, "
                     "an action that brings nothing)", self._where, stale)
        state.trim(self.cfg.remember)
        return PollResult(list(objects.values()), state.encode(),
                          more=more and bool(state.handles), announcements=list(notes.values()),
                          rejected=rejected, per_object=True)

    def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
        inner = RemoteObject(key=obj.meta["key"], version=obj.version, label=obj.label,
                             meta=obj.meta)
        hi = self._healthimaging_source() if obj.meta.get("feed") == _HI else None
        if hi is not None:
            try:
                yield from hi.fetch(inner)
            except DataError as exc:
                if not _refused_by_aws(exc):
                    raise  # transient: the batch comes back and is retried
                # Deleted since the event, as S3 objects can be: nothing to import.
                log.info("%s: an image set named by an event cannot be read: %s",
                         self._where, exc)
            return
        s3 = self._s3_source() if obj.meta.get("feed") == _S3 else None
        if s3 is None:
            raise DataError(f"{self._where}: {obj.meta.get('feed')!r} objects are not "
                            "configured")
        yield from s3.fetch(inner)

    # -- messages --------------------------------------------------------------------------
    def _read(self, message: dict[str, Any], state: _Cursor
              ) -> list[RemoteObject] | Announcement | None:
        """What ``message`` asks for; None or [] when nothing (a duplicate, an older version,
        an event that brings nothing); DataError with the reason when it is refused."""
        env = parse_envelope(message.get("Body", ""))
        if env.source == EVENT_SOURCE:
            return self._healthimaging(env, state)
        if env.source == "aws.s3":
            created = self._object_created(env, state)
            return [created] if created is not None else None
        if env.source == "aws.ecr":
            return self._image_pushed(env)
        raise DataError(f"events of source {env.source!r} are not handled; fix: route only "
                        f"{EVENT_SOURCE}, aws.s3 and aws.ecr events to this queue")

    def _healthimaging(self, env: Envelope, state: _Cursor) -> list[RemoteObject] | None:
        hi = self._healthimaging_source()
        if hi is None:
            raise DataError(f"a HealthImaging event, and no healthimaging is configured; fix: "
                            f"set data.sources.{self.name}.healthimaging.datastore_id")
        event = parse_healthimaging(env)
        if event is None:
            return None
        if event.datastore_id != hi.cfg.datastore_id:
            raise DataError(f"an event of datastore {event.datastore_id}, not the configured "
                            f"{hi.cfg.datastore_id}; fix: filter the rule on datastoreId")
        if event.image_set_id is not None:
            version = event.image_set_version or "1"
            if not state.newer(f"hi:{event.image_set_id}", _number(version)):
                return None
        elif not state.newer(f"hijob:{event.import_job_id}", "0"):
            return None
        try:
            found = hi.objects_for([event])  # an import job: its image sets, searched for
        except DataError as exc:
            if not _refused_by_aws(exc):
                raise  # transient: the poll fails and the batch comes back
            raise DataError(f"the import job cannot be read: {exc}") from exc
        objects: list[RemoteObject] = []
        for obj in found:
            if (obj.meta.get("trigger") == "search"
                    and not state.newer(f"hi:{obj.key}", _number(obj.version))):
                continue
            meta = {**obj.meta, "feed": _HI, "key": obj.key}
            objects.append(RemoteObject(key=str(obj.meta["uri"]), version=obj.version,
                                        label=obj.label, meta=meta))
        return objects

    def _object_created(self, env: Envelope, state: _Cursor) -> RemoteObject | None:
        s3 = self._s3_source()
        if s3 is None:
            raise DataError(f"an S3 event, and no s3 is configured; fix: set "
                            f"data.sources.{self.name}.s3.uri")
        event = parse_s3_object_created(env)
        if event.bucket != s3.bucket:
            raise DataError(f"an object in bucket {event.bucket!r}, not the configured "
                            f"{s3.bucket!r}; fix: filter the rule on the bucket")
        version = event.version_id or event.etag or event.sequencer
        if not version:
            raise DataError("the 'Object Created' event has no etag, version-id or sequencer")
        meta = {"feed": _S3, "key": event.key}
        if event.version_id:
            meta["version_id"] = event.version_id
        obj = s3.object_for(event.key, version, meta)
        if obj is None:  # the key is not named: it may be PHI
            raise DataError(f"an object outside the prefix {s3.prefix!r} (or a folder "
                            "marker); fix: filter the rule on the key prefix")
        order = event.order if event.sequencer else "=" + version
        if not state.newer(f"s3:{event.key}", order):
            return None
        return RemoteObject(key=str(obj.meta["uri"]), version=version, label=obj.label,
                            meta=obj.meta)

    def _image_pushed(self, env: Envelope) -> Announcement | None:
        if self.cfg.ecr is None:
            raise DataError(f"an ECR event, and no ecr is configured; fix: set "
                            f"data.sources.{self.name}.ecr (repositories: [] takes any)")
        push = parse_ecr_push(env)
        if push is None:
            return None
        wanted = self.cfg.ecr.repositories
        if wanted and push.repository not in wanted:
            raise DataError(f"a push to repository {push.repository!r}, not one of {wanted}; "
                            "fix: add it to ecr.repositories or filter the rule")
        digest = hashlib.sha256(f"{push.repository}\0{push.digest}".encode()).hexdigest()
        payload = {"repository": push.repository, "tag": push.tag, "digest": push.digest,
                   "pushed_at": push.pushed_at}
        return Announcement(str(EventKind.IMAGE_PUSHED), payload,
                            f"{EventKind.IMAGE_PUSHED}:{digest[:40]}")

    def _refuse(self, message: dict[str, Any], reason: str) -> None:
        dead = self._queue.dead_letter(message, reason)
        log.warning("%s: message %s refused (%s): %s", self._where, message.get("MessageId"),
                    "sent to the dead-letter queue" if dead
                    else "left for the queue's redrive policy", reason)


def _refused_by_aws(exc: DataError) -> bool:
    """Whether AWS answered with a client error (no such job or image set, a bad request):
    asking again gives the same answer. Throttling and unreachable endpoints are not."""
    from botocore.exceptions import ClientError

    cause = exc.__cause__
    if not isinstance(cause, ClientError):
        return False
    status = int(cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return 400 <= status < 500 and status != 429


def _number(version: str) -> str:
    """An image set version as a string that sorts as the number does."""
    return version.zfill(20) if version.isdigit() else version
