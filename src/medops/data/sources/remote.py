"""The interface of sources that live elsewhere (S3, DICOMweb, HealthImaging, XNAT).

A remote source answers two questions: what is new since a cursor (``poll``), and what are the
bytes of one object (``fetch``). Everything else (selection rules, de-identification, durable
writes, items, the cursor's storage and the ``data.arrived`` event) is the ingester's job
(:mod:`medops.data.ingest`), the same for every source.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from medops.errors import DataError

T = TypeVar("T")


@dataclass(frozen=True)
class RemoteObject:
    """One thing a source holds: an S3 object, a DICOM instance, an image set, a scan."""

    key: str  # stable within the source (object key, SOPInstanceUID, image set id, ...)
    version: str  # changes when the content changes (ETag, change sequence, version id)
    label: str | None = None  # when the source itself knows the label
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Announcement:
    """An event a source reports besides data (an image pushed to a registry); the ingester
    stores it under its idempotency key before it stores the cursor."""

    kind: str
    payload: dict[str, Any]
    key: str


@dataclass
class PollResult:
    objects: list[RemoteObject]
    cursor: str | None  # opaque; stored only after every object above has been ingested
    more: bool = False  # the source holds more past this cursor: poll again
    announcements: list[Announcement] = field(default_factory=list)
    rejected: int = 0  # messages the source refused (dead-lettered); counted in the report
    # Each object is announced by its own data.arrived event keyed by (source, key, version)
    # and skipped when that event is already stored, instead of one event per cursor: for
    # feeds of events, whose batches differ from one delivery to the next.
    per_object: bool = False


class RemoteSource(Protocol):
    name: str

    def poll(self, cursor: str | None) -> PollResult:
        """Objects new or changed since ``cursor`` (None: from the beginning)."""
        ...

    def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
        """The files of ``obj`` as (file name, bytes): DICOM, PNG or JPEG; several for an
        image set or a scan."""
        ...


def pack_cursor(prefix: str, data: Any, sort_keys: bool = False) -> str:
    """``data`` as a cursor: zlib-compressed JSON in URL-safe base64 after ``prefix``, which
    tells one kind of cursor from another (a source switched to another mode, say)."""
    raw = json.dumps(data, separators=(",", ":"), sort_keys=sort_keys).encode()
    return prefix + base64.urlsafe_b64encode(zlib.compress(raw, 6)).decode()


def unpack_cursor(cursor: str, prefix: str, convert: Callable[[Any], T], where: str,
                  kind: str, fix: str) -> T:
    """``convert`` of what :func:`pack_cursor` packed; a DataError saying ``where``, that the
    cursor is not ``kind`` or is corrupt, and ``fix``."""
    if not cursor.startswith(prefix):
        raise DataError(f"{where}: the stored cursor is not {kind}; {fix}")
    try:
        return convert(json.loads(zlib.decompress(base64.urlsafe_b64decode(cursor[len(prefix):]))))
    except (ValueError, KeyError, TypeError, AttributeError, zlib.error) as exc:
        raise DataError(f"{where}: the stored cursor is corrupt ({exc}); {fix}") from exc
