"""The S3 source against moto's S3 server on loopback, with real DICOM and PNG bytes."""

from __future__ import annotations

import io
import sys
import uuid
from typing import Any

import pytest

pytest.importorskip("boto3")

from medops.config.sources import S3SourceConfig
from medops.data.sources.factory import make_remote_source
from medops.data.sources.remote import PollResult, RemoteObject
from medops.data.sources.s3 import S3Source, parse_s3_uri
from medops.errors import ConfigError, DataError, DependencyMissingError
from tests.servers.orthanc import free_port

pytestmark = pytest.mark.usefixtures("aws_credentials")


def _dicom_bytes(name: str) -> bytes:
    from tests.samples import pydicom_file

    return pydicom_file(name).read_bytes()


def _png_bytes() -> bytes:
    """A real image (MR_small's pixels) encoded as PNG."""
    import numpy as np
    from PIL import Image
    from pydicom import dcmread

    from tests.samples import pydicom_file

    pixels = dcmread(str(pydicom_file("MR_small.dcm"))).pixel_array.astype(np.float64)
    scaled = (255 * (pixels - pixels.min()) / np.ptp(pixels)).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(scaled).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def bucket(moto_endpoint: str, aws_credentials: None) -> tuple[Any, str]:
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"scans-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=name)
    return client, name


def _source(endpoint: str, uri: str, max_keys: int = 1000, **extra: object) -> S3Source:
    cfg = S3SourceConfig(kind="s3", uri=uri, endpoint_url=endpoint, max_keys=max_keys, **extra)
    source = make_remote_source("bucket", cfg)
    assert isinstance(source, S3Source)
    return source


def _drain(source: S3Source, cursor: str | None) -> tuple[list[RemoteObject], str | None, int]:
    """Poll until the source says it is done, as the ingester does: (objects, cursor, polls)."""
    objects: list[RemoteObject] = []
    polls = 0
    while True:
        result: PollResult = source.poll(cursor)
        polls += 1
        objects += result.objects
        cursor = result.cursor
        if not result.more:
            return objects, cursor, polls


def test_paginated_listing_finds_every_object_with_its_folder_label(
        moto_endpoint: str, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    ct, png = _dicom_bytes("CT_small.dcm"), _png_bytes()
    expected: dict[str, str] = {}
    for i in range(13):
        key = f"chest/{'normal' if i % 2 else 'pneumonia'}/img{i:03d}.{'dcm' if i % 3 else 'png'}"
        client.put_object(Bucket=name, Key=key, Body=ct if i % 3 else png)
        expected[key] = key.split("/")[1]
    client.put_object(Bucket=name, Key="chest/unlabelled.dcm", Body=ct)
    client.put_object(Bucket=name, Key="chest/normal/", Body=b"")
    client.put_object(Bucket=name, Key="chest-old/x.dcm", Body=ct)

    source = _source(moto_endpoint, f"s3://{name}/chest", max_keys=3)
    objects, cursor, polls = _drain(source, None)

    assert polls >= 4  # 14 objects at 3 a page: the listing really was paginated
    got = {o.key: o.label for o in objects}
    assert got == {**expected, "chest/unlabelled.dcm": None}  # no marker, nothing outside
    assert len(objects) == len(got)  # each once
    # A second pass over an unchanged prefix finds nothing.
    again, _, _ = _drain(source, cursor)
    assert again == []


def test_changed_deleted_and_new_objects_are_seen(
        moto_endpoint: str, bucket: tuple[Any, str]) -> None:
    client, name = bucket
    ct, mr = _dicom_bytes("CT_small.dcm"), _dicom_bytes("MR_small.dcm")
    for i in range(6):
        client.put_object(Bucket=name, Key=f"p/a/{i}.dcm", Body=ct)
    source = _source(moto_endpoint, f"s3://{name}/p/", max_keys=2)
    first, cursor, _ = _drain(source, None)
    assert len(first) == 6

    client.put_object(Bucket=name, Key="p/a/2.dcm", Body=mr)  # changed
    client.put_object(Bucket=name, Key="p/a/4.dcm", Body=ct)  # rewritten, same bytes
    client.put_object(Bucket=name, Key="p/b/9.dcm", Body=ct)  # new
    client.delete_object(Bucket=name, Key="p/a/5.dcm")
    second, cursor, _ = _drain(source, cursor)
    assert sorted(o.key for o in second) == ["p/a/2.dcm", "p/b/9.dcm"]
    changed = next(o for o in second if o.key == "p/a/2.dcm")
    assert changed.version != next(o for o in first if o.key == "p/a/2.dcm").version
    assert list(source.fetch(changed)) == [("2.dcm", mr)]

    # Deleted, then uploaded again with the same bytes: it is back, so it is new.
    client.put_object(Bucket=name, Key="p/a/5.dcm", Body=ct)
    third, cursor, _ = _drain(source, cursor)
    assert [o.key for o in third] == ["p/a/5.dcm"]
    assert _drain(source, cursor)[0] == []


def test_fetch_returns_the_stored_bytes(moto_endpoint: str, bucket: tuple[Any, str]) -> None:
    from pydicom import dcmread

    client, name = bucket
    ct, png = _dicom_bytes("CT_small.dcm"), _png_bytes()
    client.put_object(Bucket=name, Key="x/ct.dcm", Body=ct)
    client.put_object(Bucket=name, Key="x/xray.png", Body=png)
    source = _source(moto_endpoint, f"s3://{name}/x/", labels_from_folders=False)
    objects, _, _ = _drain(source, None)
    files = dict(f for o in objects for f in source.fetch(o))
    assert files == {"ct.dcm": ct, "xray.png": png}
    assert dcmread(io.BytesIO(files["ct.dcm"])).Modality == "CT"
    assert files["xray.png"].startswith(b"\x89PNG")
    client.delete_object(Bucket=name, Key="x/ct.dcm")
    # Deleted between the poll and the fetch: nothing to ingest, and no error.
    assert list(source.fetch(next(o for o in objects if o.key == "x/ct.dcm"))) == []


def test_missing_bucket_is_a_config_error_naming_it(moto_endpoint: str) -> None:
    source = _source(moto_endpoint, "s3://no-such-bucket-here/scans/")
    with pytest.raises(ConfigError, match=r"'no-such-bucket-here' does not exist.*create it"):
        source.poll(None)


def test_unreachable_endpoint_is_a_data_error_after_retries() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    source = _source(endpoint, "s3://scans/")
    with pytest.raises(DataError, match=r"cannot reach the S3 endpoint after 3 attempts.*"
                                        r"endpoint_url") as err:
        source.poll(None)
    assert endpoint in str(err.value)


def test_missing_credentials_are_a_config_error(moto_endpoint: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ConfigError, match=r"no AWS credentials.*AWS_ACCESS_KEY_ID"):
        _source(moto_endpoint, "s3://scans/").poll(None)


def test_refused_credentials_are_a_config_error(moto_endpoint: str,
                                                bucket: tuple[Any, str]) -> None:
    import httpx

    _, name = bucket
    # moto checks signatures against its IAM users from now on: "testing" is not one of them.
    httpx.post(f"{moto_endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        with pytest.raises(ConfigError, match=r"refused the credentials \(InvalidAccessKeyId\)"
                                              r".*AWS_SECRET_ACCESS_KEY"):
            _source(moto_endpoint, f"s3://{name}/").poll(None)
    finally:
        httpx.post(f"{moto_endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()


def test_bad_uri_and_corrupt_cursor_are_refused(moto_endpoint: str,
                                                bucket: tuple[Any, str]) -> None:
    with pytest.raises(ConfigError, match="s3://BUCKET/PREFIX/"):
        _source(moto_endpoint, "https://scans/")
    assert parse_s3_uri("s3://b/chest") == ("b", "chest/")
    assert parse_s3_uri("s3://b") == ("b", "")
    _, name = bucket
    with pytest.raises(DataError, match="reset the source's cursor"):
        _source(moto_endpoint, f"s3://{name}/").poll("s3v1:not-base64!")


def test_missing_boto3_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # what an environment without it imports
    with pytest.raises(DependencyMissingError, match=r"medops\[aws\]"):
        _source("http://127.0.0.1:1", "s3://scans/")
