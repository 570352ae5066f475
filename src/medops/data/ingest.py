"""The one ingester every network source goes through.

For each file a source hands over: sniff it, apply the selection rules (DICOM), de-identify it
(DICOM, unless ``data.deid.enabled`` is false), write it durably under
``<landing>/<source>/<content hash>.<ext>`` (temporary file, fsync, rename), and turn it into
items. Items are keyed by that path, hence by content, so ingesting the same data twice adds
nothing.

``ingest_remote`` polls a :class:`~medops.data.sources.remote.RemoteSource` from its stored
cursor; only after every object of a poll is on disk and in the state store does it record a
``data.arrived`` event (idempotency key: source and cursor) and then the new cursor. A crash at
any point re-ingests from the old cursor without duplicate items or events.

A feed of events (the SQS feed: ``PollResult.per_object``) is announced object by object
instead, keyed by source, object and version, because a redelivered batch need not hold the same
messages: an object whose event is stored is skipped without being fetched. Events a poll
reports besides data (``image.pushed``) are stored, keyed, before the cursor.

``ingest_files`` is the same path for push sources (the C-STORE receiver): a batch of files,
one ``data.arrived`` event keyed by what the batch contained.

PHI never reaches a log line or a message: files are named by a pseudonymous key
(``<source>:<hash prefix>``), never by the name the source gave them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medops.config.enums import FrameMode
from medops.config.schema import DataConfig
from medops.data.deid import Deidentifier, read_dataset, write_dataset
from medops.data.items import items_for_file
from medops.data.selection import Selection
from medops.data.sources.remote import RemoteObject, RemoteSource
from medops.errors import DataError, UnreadableImageError, UnsupportedImageError
from medops.storage.records import EventKind, Item, ItemStatus
from medops.storage.state import StateStore

log = logging.getLogger(__name__)

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DICOM_SUFFIXES = (".dcm", ".dicom")
_MAX_POLLS = 100_000  # a source that always says "more" without moving is a bug, not data


@dataclass(frozen=True)
class IngestSettings:
    """What the ingester applies to every file: the compiled rules, built once per project."""

    selection: Selection
    deid: Deidentifier | None  # None: files are kept as they came (data.deid.enabled false)
    frames: FrameMode = FrameMode.MIDDLE

    @classmethod
    def from_config(cls, data: DataConfig, secret: bytes | None) -> IngestSettings:
        deid = None
        if data.deid.enabled:
            if secret is None:
                raise DataError("de-identification is on but no secret was given")
            deid = Deidentifier(data.deid, secret)
        return cls(selection=Selection(data.select), deid=deid, frames=data.frames)


@dataclass
class IngestReport:
    """What one ingestion did, in counts (nothing here identifies a patient)."""

    source: str
    polls: int = 0
    files: int = 0
    items: int = 0
    new: int = 0
    changed: int = 0
    quarantined: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # by selection reason
    events: int = 0
    cursor: str | None = None
    duplicates: int = 0  # objects skipped: announced by an earlier delivery
    rejected: int = 0  # messages the source refused (see the source for where they went)

    def add(self, other: IngestReport) -> None:
        self.files += other.files
        self.items += other.items
        self.new += other.new
        self.changed += other.changed
        self.quarantined += other.quarantined
        self.skipped.update(other.skipped)
        self.duplicates += other.duplicates

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "polls": self.polls, "files": self.files,
                "items": self.items, "new": self.new, "changed": self.changed,
                "quarantined": self.quarantined, "skipped": dict(self.skipped),
                "events": self.events, "duplicates": self.duplicates,
                "rejected": self.rejected, "cursor": self.cursor}


def ingest_files(files: Iterable[tuple[str, bytes]], source_name: str, state: StateStore,
                 landing_dir: Path, settings: IngestSettings,
                 label: str | None = None) -> IngestReport:
    """Ingest a batch of pushed files (e.g. one completed series) and announce it once."""
    report, items = _ingest_batch(files, source_name, landing_dir, settings, label)
    _store(state, items, report)
    if report.new or report.changed:
        digest = hashlib.sha256("\n".join(sorted(i.key for i in items)).encode()).hexdigest()
        key = _key(source_name, "batch", digest)
        if state.add_event(EventKind.DATA_ARRIVED, _payload(report), key):
            report.events += 1
    return report


def ingest_remote(source: RemoteSource, state: StateStore, landing_dir: Path,
                  settings: IngestSettings) -> IngestReport:
    """Ingest what ``source`` holds past its stored cursor, poll after poll while it has more."""
    total = IngestReport(source=source.name, cursor=state.get_cursor(source.name))
    for _ in range(_MAX_POLLS):
        cursor = total.cursor
        result = source.poll(cursor)
        total.polls += 1
        total.rejected += result.rejected
        if result.per_object:
            report = _ingest_each(source, result.objects, state, landing_dir, settings)
            total.add(report)
            total.events += report.events
            items: list[Item] = []
        else:
            report, items = _ingest_objects(source, result.objects, state, landing_dir,
                                            settings, total)
        for note in result.announcements:  # before the cursor: a crash re-announces, keyed
            if state.add_event(note.kind, note.payload, note.key):
                total.events += 1
        moved = result.cursor is not None and result.cursor != cursor
        if moved:
            if not result.per_object and state.add_event(
                    EventKind.DATA_ARRIVED, _payload(report),
                    _key(source.name, "cursor", result.cursor or "")):
                total.events += 1
            state.set_cursor(source.name, result.cursor or "")
            total.cursor = result.cursor
        elif items and (report.new or report.changed):
            digest = hashlib.sha256("\n".join(sorted(i.key for i in items)).encode())
            if state.add_event(EventKind.DATA_ARRIVED, _payload(report),
                               _key(source.name, "batch", digest.hexdigest())):
                total.events += 1
        if not result.more:
            break
        if not moved:
            raise DataError(f"source {source.name!r} says it has more but did not move its "
                            "cursor; stopping rather than polling forever")
    busy = total.items or total.events or total.duplicates or total.rejected
    log.log(logging.INFO if busy else logging.DEBUG,
            "ingested %s: %d item(s), %d new, %d quarantined, %d skipped by selection, "
            "%d already ingested, %d message(s) rejected", source.name, total.items,
            total.new, total.quarantined, sum(total.skipped.values()), total.duplicates,
            total.rejected)
    return total


def _ingest_objects(source: RemoteSource, objects: list[RemoteObject], state: StateStore,
                    landing_dir: Path, settings: IngestSettings,
                    total: IngestReport) -> tuple[IngestReport, list[Item]]:
    report = IngestReport(source=source.name)
    items: list[Item] = []
    try:
        for obj in objects:
            batch, batch_items = _fetch_object(source, obj, landing_dir, settings)
            report.add(batch)
            items += batch_items
    finally:
        # What was fetched before a failure is on disk: index it, but keep the old cursor.
        _store(state, items, report)
        total.add(report)
    return report, items


def _ingest_each(source: RemoteSource, objects: list[RemoteObject], state: StateStore,
                 landing_dir: Path, settings: IngestSettings) -> IngestReport:
    """Objects announced one by one (``PollResult.per_object``): the stored event is the
    record that an object was ingested, so a redelivered one is not fetched again."""
    report = IngestReport(source=source.name)
    for obj in objects:
        key = _key(source.name, "object", f"{obj.key}\0{obj.version}")
        if state.keyed_events(key):
            report.duplicates += 1
            continue
        batch, items = _fetch_object(source, obj, landing_dir, settings)
        _store(state, items, batch)
        if state.add_event(EventKind.DATA_ARRIVED, _payload(batch), key):
            report.events += 1
        report.add(batch)
    return report


def _fetch_object(source: RemoteSource, obj: RemoteObject, landing_dir: Path,
                  settings: IngestSettings) -> tuple[IngestReport, list[Item]]:
    try:
        return _ingest_batch(source.fetch(obj), source.name, landing_dir, settings, obj.label)
    except (UnreadableImageError, UnsupportedImageError) as exc:
        # one broken object (a frame that does not decode) must not hold the cursor back
        # forever: quarantine it whole and go on
        return IngestReport(source=source.name), [_broken_object(source.name, obj, exc)]


def _broken_object(source_name: str, obj: RemoteObject, exc: DataError) -> Item:
    digest = hashlib.sha256(f"{obj.key}\0{obj.version}".encode()).hexdigest()
    key = f"{source_name}:{digest[:16]}"
    log.warning("quarantined %s: %s", key, exc)
    return Item(uri=f"quarantine:{_safe(source_name)}/{digest}", content_hash=digest,
                source=source_name, label=obj.label, status=ItemStatus.QUARANTINED,
                reason=f"{key}: {exc}")


def _ingest_batch(files: Iterable[tuple[str, bytes]], source_name: str, landing_dir: Path,
                  settings: IngestSettings,
                  label: str | None) -> tuple[IngestReport, list[Item]]:
    report = IngestReport(source=source_name)
    items: list[Item] = []
    folder = landing_dir / _safe(source_name)
    for name, data in files:
        report.files += 1
        digest = hashlib.sha256(data).hexdigest()
        key = f"{source_name}:{digest[:16]}"  # the only name messages and logs may use
        try:
            kind = _kind(name, data)
            if kind is None:
                raise DataError(f"{key}: not a DICOM, PNG or JPEG file")
            if kind == "dcm":
                data, skip = _dicom(data, key, settings)
                if skip is not None:
                    report.skipped[skip] += 1
                    continue
                digest = hashlib.sha256(data).hexdigest()
        except DataError as exc:
            # Not written: the bytes may hold PHI that was never removed.
            log.warning("quarantined %s: %s", key, exc)
            items.append(Item(uri=f"quarantine:{_safe(source_name)}/{digest}",
                              content_hash=digest, source=source_name, label=label,
                              status=ItemStatus.QUARANTINED, reason=str(exc)))
            continue
        path = folder / f"{digest}.{kind}"
        write_atomic(path, data)
        items += items_for_file(path, source_name, label, settings.frames,
                                content_hash=digest)
    return report, items


def _dicom(data: bytes, key: str, settings: IngestSettings) -> tuple[bytes, str | None]:
    """(the bytes to keep, None) or (b"", the selection's reason to skip)."""
    if settings.deid is None and settings.selection.accepts_all:
        return data, None
    ds = read_dataset(data, key)
    reason = settings.selection.reject_reason(ds)
    if reason is not None:
        return b"", reason
    if settings.deid is None:
        return data, None
    settings.deid.deidentify(ds, key)  # BurnedInAnnotationError is a DataError: quarantined
    return write_dataset(ds, key), None


def _store(state: StateStore, items: list[Item], report: IngestReport) -> None:
    if not items:
        return
    new, changed = state.upsert_items(items)
    report.items += len(items)
    report.new += new
    report.changed += changed
    report.quarantined += sum(1 for i in items if i.status is ItemStatus.QUARANTINED)


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` at ``path`` entirely or not at all, and on disk before this returns."""
    if path.exists() and path.stat().st_size == len(data):
        return  # content-addressed: the same name is the same bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself must survive a power cut
    finally:
        os.close(fd)


def _kind(name: str, data: bytes) -> str | None:
    if data[128:132] == b"DICM":
        return "dcm"
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpg"
    # A DICOM data set without the Part 10 preamble is only known by its name.
    return "dcm" if Path(name).suffix.lower() in _DICOM_SUFFIXES else None


def _payload(report: IngestReport) -> dict[str, Any]:
    return {"source": report.source, "items": report.items, "new": report.new,
            "changed": report.changed, "quarantined": report.quarantined,
            "skipped": sum(report.skipped.values())}


def _key(source: str, what: str, value: str) -> str:
    digest = hashlib.sha256(f"{source}\0{what}\0{value}".encode()).hexdigest()[:40]
    return f"{EventKind.DATA_ARRIVED}:{digest}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "source"
