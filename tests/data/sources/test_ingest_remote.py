"""S3 and DICOMweb sources end to end through the generic ingester: items, cursor, events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("boto3")
pytest.importorskip("dicomweb_client")

from pydicom import dcmread

from medops.config.schema import DataConfig
from medops.config.sources import DicomwebSourceConfig, S3SourceConfig
from medops.data.ingest import IngestSettings, ingest_remote
from medops.data.sources.dicomweb import DicomwebSource
from medops.data.sources.factory import make_remote_source
from medops.data.sources.remote import RemoteObject
from medops.errors import DataError
from medops.storage.records import EventKind, ItemStatus
from medops.storage.state import StateStore
from tests.samples import pydicom_file
from tests.servers.orthanc import OrthancServer, running_orthanc, start_orthanc

# Distinct real images (the ingester stores by content, so equal bytes would be one item).
DICOM = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "693_J2KI.dcm")


def _bytes(name: str) -> bytes:
    return pydicom_file(name).read_bytes()


@pytest.fixture
def settings() -> IngestSettings:
    return IngestSettings.from_config(DataConfig(), secret=b"medops-test-secret-0123456789")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    yield store
    store.close()


@pytest.mark.usefixtures("aws_credentials")
def test_s3_prefix_through_the_ingester(moto_endpoint: str, tmp_path: Path, state: StateStore,
                                        settings: IngestSettings) -> None:
    import boto3

    client: Any = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"ingest-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    for i, name in enumerate(DICOM[:4]):
        client.put_object(Bucket=bucket, Key=f"scans/{'a' if i % 2 else 'b'}/{name}",
                          Body=_bytes(name))
    client.put_object(Bucket=bucket, Key="scans/b/notes.dcm", Body=b"not an image at all")
    source = make_remote_source("bucket", S3SourceConfig(
        kind="s3", uri=f"s3://{bucket}/scans/", endpoint_url=moto_endpoint, max_keys=2))
    landing = tmp_path / "landing"

    first = ingest_remote(source, state, landing, settings)
    items = state.items(source="bucket")
    assert first.files == 5 and first.new == 5 and first.quarantined == 1
    assert sorted(i.label or "" for i in items if i.status is not ItemStatus.QUARANTINED) == [
        "a", "a", "b", "b"]
    assert state.get_cursor("bucket") == first.cursor is not None
    assert len(state.event_log(EventKind.DATA_ARRIVED)) >= 1
    events = len(state.event_log(EventKind.DATA_ARRIVED))

    second = ingest_remote(source, state, landing, settings)
    assert (second.files, second.new) == (0, 0)
    assert state.get_cursor("bucket") == first.cursor
    assert len(state.event_log(EventKind.DATA_ARRIVED)) == events  # nothing new: nothing announced

    client.put_object(Bucket=bucket, Key="scans/a/CT_small.dcm", Body=_bytes(DICOM[4]))
    client.put_object(Bucket=bucket, Key="scans/c/new.dcm", Body=_bytes("examples_overlay.dcm"))
    third = ingest_remote(source, state, landing, settings)
    assert (third.files, third.new) == (2, 2)
    assert len(state.event_log(EventKind.DATA_ARRIVED)) > events
    assert state.get_cursor("bucket") == third.cursor != first.cursor


def test_orthanc_feed_through_the_ingester(orthanc: OrthancServer, tmp_path: Path,
                                           state: StateStore, settings: IngestSettings) -> None:
    orthanc.delete_all()
    for name in DICOM[:3]:
        orthanc.upload(_bytes(name))
    source = make_remote_source("pacs", DicomwebSourceConfig(
        kind="dicomweb", url=orthanc.dicomweb_url, orthanc_changes=True, page_size=5))
    landing = tmp_path / "landing"

    first = ingest_remote(source, state, landing, settings)
    assert (first.files, first.new, first.quarantined) == (3, 3, 0)
    # Orthanc keeps logging changes (StableSeries, ...) after the uploads: the cursor is where
    # the feed was read to, never past its end
    assert 0 < _cursor(state) <= orthanc.last_change()
    stored = sorted(landing.rglob("*.dcm"))
    assert len(stored) == 3
    originals = {str(dcmread(pydicom_file(n)).SOPInstanceUID) for n in DICOM[:3]}
    # De-identified on the way in: the UIDs were remapped, the pixels kept.
    assert originals.isdisjoint(str(dcmread(p).SOPInstanceUID) for p in stored)

    assert ingest_remote(source, state, landing, settings).files == 0
    orthanc.upload(_bytes(DICOM[3]))
    third = ingest_remote(source, state, landing, settings)
    assert (third.files, third.new) == (1, 1)
    assert _cursor(state) <= orthanc.last_change()


def test_orthanc_dying_mid_poll_keeps_the_cursor_and_loses_nothing(
        tmp_path: Path, state: StateStore, settings: IngestSettings) -> None:
    workdir = tmp_path / "orthanc"
    with running_orthanc(workdir) as server:
        for name in DICOM[:4]:
            server.upload(_bytes(name))

        class StopsAfterFirstFetch(DicomwebSource):
            """The real source; the real server dies after the first instance is fetched."""

            def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
                yield from super().fetch(obj)
                server.stop()

        cfg = DicomwebSourceConfig(kind="dicomweb", url=server.dicomweb_url,
                                   orthanc_changes=True, page_size=8)  # two instances a poll
        with pytest.raises(DataError, match="cannot be reached"):
            ingest_remote(StopsAfterFirstFetch("pacs", cfg), state, tmp_path / "landing",
                          settings)
    assert state.get_cursor("pacs") is None  # the poll's second instance was never fetched
    assert len(state.items(source="pacs")) == 1  # the first one is kept

    again = start_orthanc(workdir)  # the same storage, back on new ports
    try:
        cfg = DicomwebSourceConfig(kind="dicomweb", url=again.dicomweb_url,
                                   orthanc_changes=True, page_size=8)
        report = ingest_remote(DicomwebSource("pacs", cfg), state, tmp_path / "landing",
                               settings)
        assert (report.files, report.new) == (4, 3)  # the first again, already known
        assert len(state.items(source="pacs")) == 4
        assert state.get_cursor("pacs") == f"orthanc:{again.last_change()}"
    finally:
        again.stop()


def _cursor(state: StateStore) -> int:
    cursor = state.get_cursor("pacs") or ""
    assert cursor.startswith("orthanc:")
    return int(cursor.removeprefix("orthanc:"))
