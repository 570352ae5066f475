"""The HealthImaging source against a local wire-format server and moto's SQS.

Image sets are built from the real HTJ2K files of ../shared/data/dicom/htj2k and from frames
encoded with imagecodecs' HTJ2K encoder; what the source rebuilds must hold the same pixels as
the uncompressed NEMA WG04 originals, bit for bit. Only the endpoint URL differs from AWS.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("boto3")

import pydicom

from medops.config.sources import HealthImagingSourceConfig
from medops.data.sources.factory import make_remote_source
from medops.data.sources.healthimaging import (
    EventKind,
    HealthImagingSource,
    config_for_uri,
    load_events,
    parse_eventbridge_event,
    source_for_uri,
)
from medops.data.sources.remote import RemoteObject
from medops.errors import ConfigError, DataError, UnreadableImageError
from tests.servers.cloud_events import stored_image
from tests.servers.healthimaging import FakeHealthImaging, running_healthimaging

pytestmark = pytest.mark.usefixtures("aws_credentials")

DATASTORE = "bbc4f3cccbae4095a34170fddc19b13d"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"


def _event(detail_type: str, **detail: Any) -> dict[str, Any]:
    """An event shaped as the HealthImaging developer guide documents it."""
    body = {"imagingVersion": "1.0", "datastoreId": DATASTORE, **detail}
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type,
            "source": "aws.medical-imaging", "account": "111122223333",
            "time": "2024-03-14T00:01:00Z", "region": "us-west-2",
            "resources": [f"arn:aws:medical-imaging:us-west-2:111122223333:datastore/{DATASTORE}"],
            "detail": body}


def _image_set_event(image_set_id: str, detail_type: str = "Image Set Created",
                     version: str = "1") -> dict[str, Any]:
    return _event(detail_type, isPrimary=True, imageSetVersion=version, imagesetId=image_set_id,
                  imageSetState="ACTIVE", imageSetWorkflowStatus="CREATED")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeHealthImaging]]:
    with running_healthimaging() as running:
        yield running


def _source(endpoint: str, **extra: Any) -> HealthImagingSource:
    cfg = HealthImagingSourceConfig(kind="healthimaging", datastore_id=DATASTORE,
                                    region="us-west-2", endpoint_url=endpoint, **extra)
    source = make_remote_source("ahi", cfg)
    assert isinstance(source, HealthImagingSource)
    return source


def _htj2k_encoded(path: Path) -> tuple[pydicom.Dataset, list[bytes], str]:
    """An uncompressed file's frames encoded losslessly with imagecodecs (OpenJPH)."""
    imagecodecs = pytest.importorskip("imagecodecs")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1))
    frames = pixels if n > 1 else pixels[np.newaxis]
    blobs = [bytes(imagecodecs.htj2k_encode(np.ascontiguousarray(f), level=0)) for f in frames]
    del ds.PixelData
    return ds, blobs, HTJ2K_LOSSLESS


def _fetched(source: HealthImagingSource, image_set_id: str) -> list[pydicom.Dataset]:
    obj = RemoteObject(key=image_set_id, version="1")
    return [pydicom.dcmread(io.BytesIO(data)) for _, data in source.fetch(obj)]


def _pairs(shared_data: Path) -> list[tuple[Path, Path]]:
    unc = shared_data / "dicom" / "nema_wg04_uncompressed"
    return [(p, unc / p.name.replace("_JPH", "_UNC"))
            for p in sorted((shared_data / "dicom" / "htj2k").glob("*_JPH.dcm"))
            if (unc / p.name.replace("_JPH", "_UNC")).is_file()]


# -- rebuilding instances -------------------------------------------------------------------

def test_real_htj2k_image_sets_decode_to_the_uncompressed_pixels(
        server: tuple[str, FakeHealthImaging], shared_data: Path) -> None:
    endpoint, fake = server
    pairs = _pairs(shared_data)
    assert len(pairs) >= 10
    source = _source(endpoint)
    for htj2k, reference in pairs:
        image_set = fake.add_image_set(DATASTORE, [stored_image(htj2k)])
        [rebuilt] = _fetched(source, image_set)
        expected = pydicom.dcmread(reference)
        assert rebuilt.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert rebuilt.SOPInstanceUID == expected.SOPInstanceUID
        assert rebuilt.Rows == expected.Rows and rebuilt.Columns == expected.Columns
        got, want = rebuilt.pixel_array, expected.pixel_array
        assert got.dtype == want.dtype, htj2k.name
        assert np.array_equal(got, want), htj2k.name


def test_imagecodecs_frames_decode_bit_for_bit(server: tuple[str, FakeHealthImaging],
                                               shared_data: Path) -> None:
    endpoint, fake = server
    unc = shared_data / "dicom" / "nema_wg04_uncompressed"
    names = ["CT1_UNC.dcm", "MR2_UNC.dcm", "US1_UNC.dcm", "XA1_UNC.dcm", "NM1_UNC.dcm"]
    instances = [_htj2k_encoded(unc / n) for n in names]
    # One image set, several series: the layout HealthImaging uses for a study.
    image_set = fake.add_image_set(DATASTORE, instances)
    rebuilt = {ds.SOPInstanceUID: ds for ds in _fetched(_source(endpoint), image_set)}
    assert len(rebuilt) == len(names)
    for name in names:
        expected = pydicom.dcmread(unc / name)
        got = rebuilt[expected.SOPInstanceUID]
        assert np.array_equal(got.pixel_array, expected.pixel_array), name
        assert got.get("NumberOfFrames", 1) == expected.get("NumberOfFrames", 1)


def test_a_syntax_kept_in_its_original_encoding_is_decoded_by_that_syntax(
        server: tuple[str, FakeHealthImaging]) -> None:
    from tests.samples import pydicom_file

    endpoint, fake = server
    path = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")  # JPEG baseline, YBR_FULL_422
    header, frames, syntax = stored_image(path)
    assert syntax == "1.2.840.10008.1.2.4.50"
    image_set = fake.add_image_set(DATASTORE, [(header, frames, syntax)])
    [rebuilt] = _fetched(_source(endpoint), image_set)
    expected = pydicom.dcmread(path)
    assert rebuilt.PhotometricInterpretation == "RGB"
    assert np.array_equal(rebuilt.pixel_array, expected.pixel_array)  # pydicom gives RGB too


def test_a_frame_that_does_not_decode_is_refused_with_the_image_set(
        server: tuple[str, FakeHealthImaging], shared_data: Path) -> None:
    endpoint, fake = server
    header, frames, syntax = stored_image(shared_data / "dicom" / "htj2k" / "CT1_JPH.dcm")
    image_set = fake.add_image_set(DATASTORE, [(header, [frames[0][: len(frames[0]) // 3]],
                                                syntax)])
    with pytest.raises(UnreadableImageError, match=image_set):
        _fetched(_source(endpoint), image_set)


def test_metadata_attributes_reach_the_dataset(server: tuple[str, FakeHealthImaging],
                                               shared_data: Path) -> None:
    endpoint, fake = server
    path = shared_data / "dicom" / "htj2k" / "MR1_JPH.dcm"
    image_set = fake.add_image_set(DATASTORE, [stored_image(path)])
    [rebuilt] = _fetched(_source(endpoint), image_set)
    original = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Modality",
                    "PixelSpacing", "RescaleSlope", "ImageType", "BitsStored"):
        if keyword in original:
            assert rebuilt[keyword].value == original[keyword].value, keyword


def test_an_unknown_image_set_is_a_data_error_naming_the_source(
        server: tuple[str, FakeHealthImaging]) -> None:
    endpoint, _ = server
    with pytest.raises(DataError, match="ResourceNotFoundException"):
        _fetched(_source(endpoint), "0" * 32)


# -- events ---------------------------------------------------------------------------------

def test_parse_documented_events() -> None:
    created = parse_eventbridge_event(_image_set_event("5b3a711878c34d40e888253319388649"))
    assert created is not None and created.kind is EventKind.IMAGE_SET_CREATED
    assert created.image_set_id == "5b3a711878c34d40e888253319388649"
    assert created.datastore_id == DATASTORE and created.image_set_version == "1"
    updated = parse_eventbridge_event(json.dumps(_image_set_event("abc", "Image Set Updated",
                                                                  "3")))
    assert updated is not None and updated.kind is EventKind.IMAGE_SET_UPDATED
    assert updated.image_set_version == "3"
    job = parse_eventbridge_event(_event("Import Job Completed", jobId="a6a1d220f152e7aa",
                                         jobName="j", jobStatus="COMPLETED"))
    assert job is not None and job.import_job_id == "a6a1d220f152e7aa"
    assert parse_eventbridge_event(_image_set_event("x", "Image Set Deleting")) is None
    sns = {"Type": "Notification", "Message": json.dumps(_image_set_event("viasns"))}
    parsed = parse_eventbridge_event(sns)
    assert parsed is not None and parsed.image_set_id == "viasns"


@pytest.mark.parametrize("bad", [
    "not json", {"source": "aws.s3", "detail-type": "Object Created", "detail": {}},
    {"source": "aws.medical-imaging", "detail-type": "Image Set Created", "detail": {}},
    {"source": "aws.medical-imaging", "detail-type": "Image Set Created",
     "detail": {"datastoreId": DATASTORE}},
])
def test_malformed_events_are_refused(bad: Any) -> None:
    with pytest.raises(DataError):
        parse_eventbridge_event(bad)


def test_events_given_as_json_poll_their_image_sets(server: tuple[str, FakeHealthImaging],
                                                    shared_data: Path) -> None:
    endpoint, fake = server
    image_set = fake.add_image_set(DATASTORE, [stored_image(shared_data / "dicom" / "htj2k"
                                                       / "CT2_JPH.dcm")])
    source = _source(endpoint).for_events([_image_set_event(image_set, version="2"),
                                           _image_set_event("x", "Image Set Deleted")])
    result = source.poll("kept")
    assert [(o.key, o.version) for o in result.objects] == [(image_set, "2")]
    assert result.cursor == "kept"  # explicit events do not move the source's cursor
    assert len(list(source.fetch(result.objects[0]))) == 1


def test_import_job_completed_finds_the_image_sets_of_the_job(
        server: tuple[str, FakeHealthImaging], shared_data: Path) -> None:
    from tests.servers.healthimaging import ImportJob

    endpoint, fake = server
    datastore = uuid.uuid4().hex  # its own datastore: only this job's image sets are in it
    submitted = datetime.now(timezone.utc) - timedelta(seconds=1)
    ids = [fake.add_image_set(datastore, [stored_image(shared_data / "dicom" / "htj2k" / n)])
           for n in ("CT1_JPH.dcm", "MR3_JPH.dcm")]
    fake.jobs["job1"] = ImportJob("job1", submitted, datetime.now(timezone.utc))
    cfg = HealthImagingSourceConfig(kind="healthimaging", datastore_id=datastore,
                                    region="us-west-2", endpoint_url=endpoint)
    event = _event("Import Job Completed", jobId="job1", jobStatus="COMPLETED")
    event["detail"]["datastoreId"] = datastore
    objects = HealthImagingSource("ahi", cfg).for_events([event]).poll(None).objects
    assert sorted(o.key for o in objects) == sorted(ids)


# -- manual trigger and search --------------------------------------------------------------

def test_uri_trigger_polls_one_image_set(server: tuple[str, FakeHealthImaging],
                                         shared_data: Path) -> None:
    endpoint, fake = server
    image_set = fake.add_image_set(DATASTORE, [stored_image(shared_data / "dicom" / "htj2k"
                                                       / "NM1_JPH.dcm")])
    fake.touch(DATASTORE, image_set)
    source = source_for_uri(f"healthimaging://{DATASTORE}/{image_set}"
                            f"?region=us-west-2&endpoint_url={endpoint}")
    [obj] = source.poll(None).objects
    assert (obj.key, obj.version) == (image_set, "2")
    assert obj.meta["uri"] == f"healthimaging://{DATASTORE}/{image_set}"
    [(name, data)] = list(source.fetch(obj))
    assert name.startswith(image_set) and name.endswith(".dcm")
    assert pydicom.dcmread(io.BytesIO(data)).Modality == "NM"


def test_uri_config_and_event_files(tmp_path: Path) -> None:
    cfg = config_for_uri(f"healthimaging://{DATASTORE}/a,b?region=eu-west-1")
    assert (cfg.datastore_id, cfg.image_set_ids, cfg.region) == (DATASTORE, ["a", "b"],
                                                                 "eu-west-1")
    assert config_for_uri(f"healthimaging://{DATASTORE}").image_set_ids == []
    one, many = tmp_path / "one.json", tmp_path / "many.jsonl"
    one.write_text(json.dumps(_image_set_event("x")))
    many.write_text("\n".join(json.dumps(_image_set_event(i)) for i in "yz") + "\n")
    assert [e["detail"]["imagesetId"] for e in load_events(one) + load_events(many)] == \
        ["x", "y", "z"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad\.json"):
        load_events(tmp_path / "bad.json")


@pytest.mark.parametrize("uri", ["s3://bucket/x", "healthimaging:///nothing",
                                 f"healthimaging://{DATASTORE}/x?colour=blue"])
def test_bad_uris_are_config_errors(uri: str) -> None:
    with pytest.raises(ConfigError):
        source_for_uri(uri)


def test_search_poll_returns_what_changed_since_the_cursor(
        server: tuple[str, FakeHealthImaging], shared_data: Path) -> None:
    endpoint, fake = server
    datastore = uuid.uuid4().hex
    cfg = HealthImagingSourceConfig(kind="healthimaging", datastore_id=datastore,
                                    region="us-west-2", endpoint_url=endpoint)
    source = HealthImagingSource("ahi", cfg)
    first = [fake.add_image_set(datastore, [stored_image(shared_data / "dicom" / "htj2k" / n)])
             for n in ("CT1_JPH.dcm", "CT2_JPH.dcm")]
    result = source.poll(None)
    assert sorted(o.key for o in result.objects) == sorted(first)
    time.sleep(0.01)
    fake.touch(datastore, first[0])
    again = source.poll(result.cursor)
    assert [(o.key, o.version) for o in again.objects if o.key == first[0]] == [(first[0], "2")]
    assert first[1] not in {o.key for o in again.objects}


# -- SQS ------------------------------------------------------------------------------------

@pytest.fixture
def queue(moto_endpoint: str) -> tuple[Any, str]:
    import boto3

    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-west-2")
    url = sqs.create_queue(QueueName=f"ahi-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    return sqs, url


def _waiting(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


def test_sqs_events_are_deleted_only_after_the_next_poll(
        server: tuple[str, FakeHealthImaging], queue: tuple[Any, str], moto_endpoint: str,
        shared_data: Path) -> None:
    endpoint, fake = server
    sqs, url = queue
    image_set = fake.add_image_set(DATASTORE, [stored_image(shared_data / "dicom" / "htj2k"
                                                       / "MR4_JPH.dcm")])
    other = _image_set_event("elsewhere")
    other["detail"]["datastoreId"] = "another"
    for body in (_image_set_event(image_set), _image_set_event(image_set, "Image Set Updated",
                                                               "2"),
                 other, {"source": "aws.s3"}):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    source = _source(endpoint, sqs_queue_url=url, sqs_endpoint_url=moto_endpoint)
    result = source.poll(None)
    # Two events for one image set: one object, at the newest version.
    assert [(o.key, o.version) for o in result.objects] == [(image_set, "2")]
    assert _waiting(sqs, url) == 4  # nothing deleted before the cursor is stored
    # The ingester stored result.cursor: the next poll (any process) deletes the batch.
    nothing = _source(endpoint, sqs_queue_url=url, sqs_endpoint_url=moto_endpoint).poll(
        result.cursor)
    assert nothing.objects == []
    assert _waiting(sqs, url) == 0


def test_sqs_batch_not_acknowledged_comes_back(server: tuple[str, FakeHealthImaging],
                                               queue: tuple[Any, str],
                                               moto_endpoint: str) -> None:
    endpoint, _ = server
    sqs, url = queue
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(_image_set_event("lost-once")))
    source = _source(endpoint, sqs_queue_url=url, sqs_endpoint_url=moto_endpoint,
                     sqs_visibility_s=1)
    assert [o.key for o in source.poll(None).objects] == ["lost-once"]
    # A crash: the cursor was never stored. After the visibility timeout it is delivered again.
    time.sleep(1.2)
    again = source.poll(None)
    assert [o.key for o in again.objects] == ["lost-once"]
    source.poll(again.cursor)
    assert _waiting(sqs, url) == 0


def test_a_cursor_of_another_kind_is_refused(server: tuple[str, FakeHealthImaging],
                                             queue: tuple[Any, str],
                                             moto_endpoint: str) -> None:
    endpoint, _ = server
    _, url = queue
    source = _source(endpoint, sqs_queue_url=url, sqs_endpoint_url=moto_endpoint)
    with pytest.raises(DataError, match="cursor"):
        source.poll("search:{}")


# -- end to end through the ingester --------------------------------------------------------

def test_ingest_remote_lands_deidentified_instances_with_the_reference_pixels(
        server: tuple[str, FakeHealthImaging], queue: tuple[Any, str], moto_endpoint: str,
        shared_data: Path, tmp_path: Path) -> None:
    from medops.config import parse_config
    from medops.data.ingest import IngestSettings, ingest_remote
    from medops.storage import ItemStatus, StateStore

    endpoint, fake = server
    sqs, url = queue
    names = ["CT1", "MR1"]
    for name in names:
        image_set = fake.add_image_set(
            DATASTORE, [stored_image(shared_data / "dicom" / "htj2k" / f"{name}_JPH.dcm")])
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(_image_set_event(image_set)))
    settings = IngestSettings.from_config(parse_config({"project": "p"}).data,
                                          b"healthimaging-test-secret-0123")
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    source = _source(endpoint, sqs_queue_url=url, sqs_endpoint_url=moto_endpoint)
    try:
        report = ingest_remote(source, state, tmp_path / "landing", settings)
        assert report.new == 2 and report.quarantined == 0
        assert _waiting(sqs, url) == 2  # stored, not yet acknowledged
        items = state.items(source="ahi")
        assert len(items) == 2 and all(i.status is ItemStatus.PENDING for i in items)
        references = [pydicom.dcmread(shared_data / "dicom" / "nema_wg04_uncompressed"
                                      / f"{n}_UNC.dcm") for n in names]
        for item in items:
            landed = pydicom.dcmread(item.uri)
            assert landed.PatientIdentityRemoved == "YES"
            assert any(np.array_equal(landed.pixel_array, r.pixel_array) for r in references)
        # The next run starts from the stored cursor: it acknowledges the batch, finds nothing.
        again = ingest_remote(source, state, tmp_path / "landing", settings)
        assert again.new == 0 and _waiting(sqs, url) == 0
    finally:
        state.close()


def test_an_image_set_that_does_not_decode_is_quarantined_and_the_rest_goes_on(
        server: tuple[str, FakeHealthImaging], shared_data: Path, tmp_path: Path) -> None:
    from medops.config import parse_config
    from medops.data.ingest import IngestSettings, ingest_remote
    from medops.storage import ItemStatus, StateStore

    endpoint, fake = server
    header, frames, syntax = stored_image(shared_data / "dicom" / "htj2k" / "CT1_JPH.dcm")
    broken = fake.add_image_set(DATASTORE, [(header, [frames[0][: len(frames[0]) // 3]],
                                             syntax)])
    good = fake.add_image_set(
        DATASTORE, [stored_image(shared_data / "dicom" / "htj2k" / "MR1_JPH.dcm")])
    settings = IngestSettings.from_config(parse_config({"project": "p"}).data,
                                          b"healthimaging-test-secret-0123")
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    source = _source(endpoint, image_set_ids=[broken, good])
    try:
        report = ingest_remote(source, state, tmp_path / "landing", settings)
        items = state.items(source="ahi")
        assert report.quarantined == 1 and report.new == 2
        bad = [i for i in items if i.status is ItemStatus.QUARANTINED]
        assert len(bad) == 1 and broken in (bad[0].reason or "")  # the reason names the set
        ok = [i for i in items if i.status is ItemStatus.PENDING]
        assert len(ok) == 1 and pydicom.dcmread(ok[0].uri).PatientIdentityRemoved == "YES"
    finally:
        state.close()
