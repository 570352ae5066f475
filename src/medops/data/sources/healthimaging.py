"""AWS HealthImaging as a remote source: image sets in, Part-10 DICOM instances out.

What is new comes from one of three places:

* **EventBridge events through SQS** (``sqs_queue_url`` set): HealthImaging publishes
  ``Image Set Created`` / ``Image Set Updated`` / ``Import Job Completed`` (source
  ``aws.medical-imaging``); an EventBridge rule sends them to a queue, and a poll drains it.
  Delivery is at-least-once: a message is deleted only on the *next* poll, after the ingester
  stored the cursor of the batch it came in. The cursor carries that batch's receipt handles, so
  this also holds across processes. A crash before the cursor is stored leaves the messages in
  the queue; they come back after the visibility timeout and are ingested again (the ingester
  skips an image set whose version it already holds).
  A queue that also carries S3 and ECR events is read by the ``sqs`` feed
  (:mod:`medops.data.sources.sqs`), which parses and fetches through this module.
* **Events given as JSON**: :func:`load_events` reads a file, :meth:`HealthImagingSource.
  for_events` polls what they name, :func:`parse_eventbridge_event` parses one event.
* **A manual trigger**: ``healthimaging://DATASTORE/IMAGESET`` (:func:`config_for_uri`,
  :func:`source_for_uri`) or ``image_set_ids`` in the config.
* **Neither** (no queue): SearchImageSets by ``updatedAt``, the newest seen being the cursor.

``Import Job Completed`` names a job, not image sets: the job's ``submittedAt``..``endedAt``
window (GetDICOMImportJob) is searched for image sets updated in it. That may include image
sets another writer touched in the same window, which costs a re-fetch, never a miss.

Each image set is fetched with GetImageSetMetadata (gzip JSON) and GetImageFrame per frame and
rebuilt into DICOM instances by :mod:`medops.data.sources.ahi_dicom`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from medops.config.sources import HealthImagingSourceConfig
from medops.data.sources.eventbridge import Envelope, parse_envelope
from medops.data.sources.remote import PollResult, RemoteObject
from medops.data.sources.sqs_queue import EventQueue, aws_call, make_client
from medops.errors import ConfigError, DataError

log = logging.getLogger(__name__)

EVENT_SOURCE = "aws.medical-imaging"
_CURSOR_SQS = "sqs:"
_CURSOR_TIME = "search:"
_SEARCH_PAGE = 50
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SLACK = timedelta(seconds=2)  # the search filter's precision, with a margin


class EventKind(str, Enum):
    IMAGE_SET_CREATED = "Image Set Created"
    IMAGE_SET_UPDATED = "Image Set Updated"
    IMAGE_SET_COPIED = "Image Set Copied"
    IMPORT_JOB_COMPLETED = "Import Job Completed"


@dataclass(frozen=True)
class HealthImagingEvent:
    """The part of a HealthImaging EventBridge event that says what to fetch."""

    kind: EventKind
    datastore_id: str
    image_set_id: str | None = None  # image set events
    image_set_version: str | None = None
    import_job_id: str | None = None  # Import Job Completed


def parse_eventbridge_event(event: dict[str, Any] | str | bytes) -> HealthImagingEvent | None:
    """One EventBridge event (a dict or its JSON, as EventBridge, SQS or SNS deliver it).

    None for a HealthImaging event that brings nothing to fetch (Image Set Deleting, Import
    Job Submitted, ...); DataError for anything that is not a HealthImaging event.
    """
    return parse_healthimaging(parse_envelope(event, strict=False))


def parse_healthimaging(env: Envelope) -> HealthImagingEvent | None:
    """The HealthImaging event of an EventBridge envelope (see :func:`parse_eventbridge_event`)."""
    if env.source != EVENT_SOURCE:
        raise DataError(f"the event's source is {env.source!r}, not {EVENT_SOURCE!r}; "
                        "fix: route only HealthImaging events to this queue")
    try:
        kind = EventKind(env.detail_type)
    except ValueError:
        return None
    detail = env.detail
    if not detail.get("datastoreId"):
        raise DataError(f"the {kind.value!r} event has no detail.datastoreId")
    datastore = str(detail["datastoreId"])
    if kind is EventKind.IMPORT_JOB_COMPLETED:
        job = detail.get("jobId") or detail.get("importJobId")
        if not job:
            raise DataError("the 'Import Job Completed' event has no detail.jobId")
        return HealthImagingEvent(kind, datastore, import_job_id=str(job))
    # The documented key is "imagesetId"; accept the API's spelling too.
    image_set = detail.get("imagesetId") or detail.get("imageSetId")
    if not image_set:
        raise DataError(f"the {kind.value!r} event has no detail.imagesetId")
    version = detail.get("imageSetVersion")
    return HealthImagingEvent(kind, datastore, image_set_id=str(image_set),
                              image_set_version=str(version) if version is not None else None)


def config_for_uri(uri: str) -> HealthImagingSourceConfig:
    """The config ``healthimaging://DATASTORE[/IMAGESET[,IMAGESET...]]`` stands for.

    Query parameters ``region`` and ``endpoint_url`` configure the client. With image set ids
    a poll returns exactly those (a manual trigger); without, the datastore's image sets
    updated since the cursor.
    """
    parts = urlsplit(uri)
    if parts.scheme != "healthimaging" or not parts.netloc:
        raise ConfigError(f"{uri!r} is not a HealthImaging URI; write it as "
                          "healthimaging://DATASTORE_ID/IMAGE_SET_ID")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"region", "endpoint_url"}
    if unknown:
        raise ConfigError(f"{uri!r}: unknown parameter(s) {sorted(unknown)}; "
                          "known: region, endpoint_url")
    ids = [i for i in parts.path.strip("/").split(",") if i]
    return HealthImagingSourceConfig(kind="healthimaging", datastore_id=parts.netloc,
                                     region=query.get("region"),
                                     endpoint_url=query.get("endpoint_url"), image_set_ids=ids)


def source_for_uri(uri: str, name: str | None = None) -> HealthImagingSource:
    """The source for a ``healthimaging://`` URI (see :func:`config_for_uri`)."""
    cfg = config_for_uri(uri)
    return HealthImagingSource(name or f"healthimaging-{cfg.datastore_id}", cfg)


def load_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """EventBridge events from a JSON file: one event, a list of them, or one per line."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise DataError(f"{path}: not JSON nor JSON lines ({exc})") from exc
    events = data if isinstance(data, list) else [data]
    if not all(isinstance(e, dict) for e in events):
        raise DataError(f"{path}: expected EventBridge event objects")
    return events


class HealthImagingSource:
    """Image sets of one HealthImaging datastore (see the module docstring)."""

    def __init__(self, name: str, cfg: HealthImagingSourceConfig, *,
                 events: list[HealthImagingEvent] | None = None) -> None:
        self.name = name
        self.cfg = cfg
        self._pinned = list(cfg.image_set_ids)
        self._events = events
        where = f"data.sources.{name} (HealthImaging datastore {cfg.datastore_id}"
        self._where = where + (f" at {cfg.endpoint_url})" if cfg.endpoint_url else ")")
        what = f"the HealthImaging source of datastore {cfg.datastore_id}"
        self._client = make_client("medical-imaging", cfg.endpoint_url, cfg.region, what)
        self._queue = None
        if cfg.sqs_queue_url and events is None:
            self._queue = EventQueue(make_client("sqs", cfg.sqs_endpoint_url, cfg.region, what),
                                     cfg.sqs_queue_url, self._where, wait_s=cfg.sqs_wait_s,
                                     visibility_s=cfg.sqs_visibility_s)

    def for_events(self, events: list[dict[str, Any]]) -> HealthImagingSource:
        """The same datastore, polling exactly the image sets these events name."""
        parsed = [e for e in (parse_eventbridge_event(ev) for ev in events) if e is not None]
        return HealthImagingSource(self.name, self.cfg.model_copy(update={"image_set_ids": []}),
                                   events=parsed)

    # -- RemoteSource ---------------------------------------------------------------------
    def poll(self, cursor: str | None) -> PollResult:
        if self._pinned:
            return PollResult([self._pinned_object(i) for i in self._pinned], cursor)
        if self._events is not None:
            return PollResult(self.objects_for(self._events), cursor)
        if self._queue is not None:
            return self._poll_queue(cursor)
        return self._poll_search(cursor)

    def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
        from medops.data.sources.ahi_dicom import build_instance, instances, parse_metadata_blob

        image_set = obj.key
        kwargs: dict[str, Any] = {"datastoreId": self.cfg.datastore_id, "imageSetId": image_set}
        answer = self._call(self._client, "get_image_set_metadata", **kwargs)
        doc = parse_metadata_blob(_read(answer["imageSetMetadataBlob"]), image_set)
        for ref in instances(doc, image_set):
            frames = [self._frame(image_set, f.frame_id) for f in ref.frames]
            # A stable name that carries no UID (UIDs are remapped by de-identification).
            digest = hashlib.sha256(ref.sop_instance_uid.encode()).hexdigest()[:16]
            yield f"{image_set}-{digest}.dcm", build_instance(ref, frames, image_set)

    # -- polling ---------------------------------------------------------------------------
    def _poll_queue(self, cursor: str | None) -> PollResult:
        assert self._queue is not None
        if cursor and not cursor.startswith(_CURSOR_SQS):
            raise DataError(f"{self._where}: the stored cursor is not a queue cursor; fix: "
                            "reset the source's cursor")
        self._queue.delete(json.loads(cursor[len(_CURSOR_SQS):]) if cursor else [])
        messages, more = self._queue.receive()
        events = [e for m in messages for e in self._message_events(m)]
        handles = [m["ReceiptHandle"] for m in messages]
        return PollResult(self.objects_for(events), _CURSOR_SQS + json.dumps(handles),
                          more=more)

    def _message_events(self, message: dict[str, Any]) -> list[HealthImagingEvent]:
        try:
            event = parse_eventbridge_event(message.get("Body", ""))
        except DataError as exc:
            # Deleted with its batch: a message that never parses would come back forever.
            log.warning("%s: message %s dropped: %s", self._where, message.get("MessageId"), exc)
            return []
        if event is None:
            return []
        if event.datastore_id != self.cfg.datastore_id:
            log.info("%s: event for datastore %s ignored", self._where, event.datastore_id)
            return []
        return [event]

    def _poll_search(self, cursor: str | None) -> PollResult:
        """Image sets updated since the cursor. The cursor keeps the newest ``updatedAt`` seen
        and the versions seen just before it: the search filter has whole-second precision, so
        those come back and must not be fetched again."""
        since, seen = _EPOCH, {}
        if cursor:
            if not cursor.startswith(_CURSOR_TIME):
                raise DataError(f"{self._where}: the stored cursor is not a search cursor; "
                                "fix: reset the source's cursor")
            try:
                state = json.loads(cursor[len(_CURSOR_TIME):])
                since, seen = datetime.fromisoformat(state["t"]), dict(state["seen"])
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{self._where}: the stored cursor is corrupt ({exc}); fix: "
                                "reset the source's cursor") from exc
        until = datetime.now(timezone.utc) + timedelta(minutes=5)
        summaries, more = self._search(max(since - _SLACK, _EPOCH), until, limit=_SEARCH_PAGE * 4)
        fresh = [s for s in summaries
                 if seen.get(str(s["imageSetId"])) != str(s.get("version", "1"))]
        last = max((s["updatedAt"] for s in summaries), default=since)
        recent = {str(s["imageSetId"]): str(s.get("version", "1")) for s in summaries
                  if s["updatedAt"] >= last - _SLACK} if summaries else seen
        state = {"t": last.isoformat(), "seen": recent}
        return PollResult([self._summary_object(s) for s in fresh],
                          _CURSOR_TIME + json.dumps(state, separators=(",", ":")), more=more)

    def _search(self, since: datetime, until: datetime, limit: int
                ) -> tuple[list[dict[str, Any]], bool]:
        criteria = {"filters": [{"values": [{"updatedAt": since}, {"updatedAt": until}],
                                 "operator": "BETWEEN"}],
                    "sort": {"sortOrder": "ASC", "sortField": "updatedAt"}}
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"datastoreId": self.cfg.datastore_id,
                                      "searchCriteria": criteria, "maxResults": _SEARCH_PAGE}
            if token:
                kwargs["nextToken"] = token
            answer = self._call(self._client, "search_image_sets", **kwargs)
            found.extend(answer.get("imageSetsMetadataSummaries", []))
            token = answer.get("nextToken")
            if not token:
                return found, False
            if len(found) >= limit:
                return found, True

    def objects_for(self, events: list[HealthImagingEvent]) -> list[RemoteObject]:
        """The image sets ``events`` name (an import job's found by searching its window), one
        object per image set at the newest version named."""
        by_id: dict[str, RemoteObject] = {}
        for event in events:
            if event.import_job_id is not None:
                for obj in self._job_objects(event.import_job_id):
                    by_id[obj.key] = obj
            elif event.image_set_id is not None:
                version = event.image_set_version or "1"
                by_id[event.image_set_id] = self._object(event.image_set_id, version,
                                                         event.kind.value)
        return list(by_id.values())

    def _job_objects(self, job_id: str) -> list[RemoteObject]:
        job = self._call(self._client, "get_dicom_import_job",
                         datastoreId=self.cfg.datastore_id, jobId=job_id)["jobProperties"]
        start = job.get("submittedAt") or _EPOCH
        end = job.get("endedAt") or datetime.now(timezone.utc)
        summaries, _ = self._search(start, end + timedelta(minutes=1), limit=10_000)
        return [self._summary_object(s) for s in summaries]

    def _pinned_object(self, image_set_id: str) -> RemoteObject:
        answer = self._call(self._client, "get_image_set", datastoreId=self.cfg.datastore_id,
                            imageSetId=image_set_id)
        return self._object(image_set_id, str(answer.get("versionId", "1")), "manual")

    def _summary_object(self, summary: dict[str, Any]) -> RemoteObject:
        return self._object(str(summary["imageSetId"]), str(summary.get("version", "1")),
                            "search")

    def _object(self, image_set_id: str, version: str, why: str) -> RemoteObject:
        return RemoteObject(key=image_set_id, version=version,
                            meta={"datastore_id": self.cfg.datastore_id,
                                  "image_set_id": image_set_id, "trigger": why,
                                  "uri": f"healthimaging://{self.cfg.datastore_id}/"
                                         f"{image_set_id}"})

    # -- calls -----------------------------------------------------------------------------
    def _frame(self, image_set_id: str, frame_id: str) -> bytes:
        answer = self._call(self._client, "get_image_frame", datastoreId=self.cfg.datastore_id,
                            imageSetId=image_set_id,
                            imageFrameInformation={"imageFrameId": frame_id})
        return _read(answer["imageFrameBlob"])

    def _call(self, client: Any, operation: str, **kwargs: Any) -> dict[str, Any]:
        return aws_call(client, operation, self._where, "read the datastore", **kwargs)


def _read(body: Any) -> bytes:
    try:
        data: bytes = body.read()
        return data
    finally:
        body.close()
