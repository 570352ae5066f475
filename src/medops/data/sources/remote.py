"""The interface of sources that live elsewhere (S3, DICOMweb, HealthImaging, XNAT).

A remote source answers two questions: what is new since a cursor (``poll``), and what are the
bytes of one object (``fetch``). Everything else (selection rules, de-identification, durable
writes, items, the cursor's storage and the ``data.arrived`` event) is the ingester's job
(:mod:`medops.data.ingest`), the same for every source.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class RemoteObject:
    """One thing a source holds: an S3 object, a DICOM instance, an image set, a scan."""

    key: str  # stable within the source (object key, SOPInstanceUID, image set id, ...)
    version: str  # changes when the content changes (ETag, change sequence, version id)
    label: str | None = None  # when the source itself knows the label
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PollResult:
    objects: list[RemoteObject]
    cursor: str | None  # opaque; stored only after every object above has been ingested
    more: bool = False  # the source holds more past this cursor: poll again


class RemoteSource(Protocol):
    name: str

    def poll(self, cursor: str | None) -> PollResult:
        """Objects new or changed since ``cursor`` (None: from the beginning)."""
        ...

    def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
        """The files of ``obj`` as (file name, bytes): DICOM, PNG or JPEG; several for an
        image set or a scan."""
        ...
