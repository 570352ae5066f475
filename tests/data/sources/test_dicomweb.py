"""The DICOMweb source against a real Orthanc (DICOMweb plugin) on loopback, real DICOM files."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

pytest.importorskip("dicomweb_client")

from pydicom import dcmread

from medops.config.sources import DicomwebSourceConfig
from medops.data.sources.dicomweb import DicomwebSource
from medops.data.sources.factory import make_remote_source
from medops.data.sources.remote import RemoteObject
from medops.errors import ConfigError, DataError, DependencyMissingError
from tests.samples import pydicom_file
from tests.servers.orthanc import OrthancServer, running_orthanc

# Real files, each a distinct SOP instance: CT, MR, NM in JPEG 2000, RGB in JPEG baseline; an
# uncompressed one that storescu sends (it proposes uncompressed transfer syntaxes by default);
# and one that arrives later.
FILES = ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm")
C_STORED = "SC_rgb_small_odd.dcm"
LATER = "693_J2KI.dcm"


def _sop(name: str) -> str:
    return str(dcmread(pydicom_file(name), stop_before_pixels=True).SOPInstanceUID)


def _source(server: OrthancServer, **extra: object) -> DicomwebSource:
    cfg = DicomwebSourceConfig(kind="dicomweb", url=server.dicomweb_url, **extra)
    source = make_remote_source("pacs", cfg)
    assert isinstance(source, DicomwebSource)
    return source


def _drain(source: DicomwebSource, cursor: str | None) -> tuple[list[RemoteObject], str | None,
                                                                  int]:
    objects: list[RemoteObject] = []
    polls = 0
    while True:
        result = source.poll(cursor)
        polls += 1
        objects += result.objects
        cursor = result.cursor
        if not result.more:
            return objects, cursor, polls


@pytest.fixture
def empty_orthanc(orthanc: OrthancServer) -> OrthancServer:
    orthanc.delete_all()
    return orthanc


def test_change_feed_finds_uploaded_and_c_stored_instances(empty_orthanc: OrthancServer) -> None:
    server = empty_orthanc
    for name in FILES:
        server.upload(pydicom_file(name).read_bytes())
    server.storescu(pydicom_file(C_STORED))  # over DICOM networking, as a modality would send it

    source = _source(server, orthanc_changes=True, page_size=3)
    objects, cursor, polls = _drain(source, None)  # from the start: deleted ones are skipped

    assert polls > 2  # ~20 changes (instance, series, study, patient) at 3 a page
    assert sorted(o.key for o in objects) == sorted(_sop(n) for n in (*FILES, C_STORED))
    by_key = {o.key: o for o in objects}
    for name in FILES:  # POSTed files come back byte for byte
        assert list(source.fetch(by_key[_sop(name)])) == [
            (f"{_sop(name)}.dcm", pydicom_file(name).read_bytes())]
    (_, stored), = source.fetch(by_key[_sop(C_STORED)])
    original, received = dcmread(pydicom_file(C_STORED)), dcmread(io.BytesIO(stored))
    assert received.SOPInstanceUID == original.SOPInstanceUID
    assert received.PixelData == original.PixelData

    assert _drain(source, cursor)[0] == []  # nothing new since the cursor
    assert cursor is not None and int(cursor.split(":")[1]) == server.last_change()
    server.upload(pydicom_file(LATER).read_bytes())
    new, _, _ = _drain(source, cursor)
    assert [o.key for o in new] == [_sop(LATER)]


def test_change_feed_applies_filters_and_label_tag(empty_orthanc: OrthancServer) -> None:
    server = empty_orthanc
    for name in FILES:
        server.upload(pydicom_file(name).read_bytes())
    ct_mr = _source(server, orthanc_changes=True, filters={"Modality": "CT\\MR"},
                    label_tag="Modality")
    objects, _, _ = _drain(ct_mr, None)
    assert {o.key: o.label for o in objects} == {_sop(n): str(dcmread(pydicom_file(n)).Modality)
                                                  for n in FILES[:2]}
    study_date = str(dcmread(pydicom_file("CT_small.dcm")).StudyDate)
    dated = _source(server, orthanc_changes=True,
                    filters={"StudyDate": f"{study_date}-{study_date}", "Modality": "C?"})
    assert [o.key for o in _drain(dated, None)[0]] == [_sop("CT_small.dcm")]


def test_qido_search_pages_and_remembers_what_it_returned(empty_orthanc: OrthancServer) -> None:
    server = empty_orthanc
    for name in FILES:
        server.upload(pydicom_file(name).read_bytes())
    source = _source(server, page_size=2, label_tag="Modality")
    objects, cursor, polls = _drain(source, None)
    assert polls >= 2
    assert sorted(o.key for o in objects) == sorted(_sop(n) for n in FILES)
    assert {o.label for o in objects} == {str(dcmread(pydicom_file(n)).Modality) for n in FILES}
    assert _drain(source, cursor)[0] == []

    server.upload(pydicom_file(LATER).read_bytes())
    new, cursor, _ = _drain(source, cursor)
    assert [o.key for o in new] == [_sop(LATER)]
    assert _drain(source, cursor)[0] == []


def test_wado_retrieve_keeps_the_stored_transfer_syntax_and_pixels(
        empty_orthanc: OrthancServer) -> None:
    server = empty_orthanc
    for name in ("JPEG2000.dcm", "CT_small.dcm"):
        server.upload(pydicom_file(name).read_bytes())
    source = _source(server, filters={"Modality": "NM"})  # JPEG2000.dcm is nuclear medicine
    (obj,), _, _ = _drain(source, None)
    (file_name, data), = source.fetch(obj)
    original, got = dcmread(pydicom_file("JPEG2000.dcm")), dcmread(io.BytesIO(data))
    assert file_name == f"{original.SOPInstanceUID}.dcm"
    assert got.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert got.PixelData == original.PixelData
    assert (got.pixel_array == original.pixel_array).all()


def test_orthanc_going_away_stops_the_poll_without_advancing(tmp_path: Path) -> None:
    with running_orthanc(tmp_path / "orthanc") as server:
        for name in FILES:
            server.upload(pydicom_file(name).read_bytes())
        source = _source(server, orthanc_changes=True, page_size=4)
        first = source.poll(None)
        assert len(first.objects) == 1 and first.more
        assert list(source.fetch(first.objects[0]))
    # The server is gone: the next poll and any fetch fail clearly; no cursor comes back.
    with pytest.raises(DataError, match=r"cannot be reached after 3 attempts.*check that it is"):
        source.poll(first.cursor)
    with pytest.raises(DataError, match="cannot be reached"):
        list(source.fetch(first.objects[0]))


def test_bearer_token_comes_from_the_environment(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PACS_TOKEN", raising=False)
    cfg = DicomwebSourceConfig(kind="dicomweb", url="http://127.0.0.1:1/dicom-web",
                               token_env="PACS_TOKEN")
    with pytest.raises(ConfigError, match="PACS_TOKEN is not set"):
        DicomwebSource("pacs", cfg)
    monkeypatch.setenv("PACS_TOKEN", "not-the-right-one")
    # Orthanc with authentication on refuses the token: the error names the variable to fix.
    with running_orthanc(tmp_path / "orthanc", {"AuthenticationEnabled": True,
                                                "RegisteredUsers": {"alice": "secret"}}) as srv:
        source = _source(srv, token_env="PACS_TOKEN")
        with pytest.raises(ConfigError, match=r"HTTP 401.*PACS_TOKEN"):
            source.poll(None)
        assert source._session.headers["Authorization"] == "Bearer not-the-right-one"


def test_bad_configuration_is_refused_when_the_source_is_built() -> None:
    with pytest.raises(ConfigError, match="'Modalty' is not a DICOM keyword; did you mean "
                                          "'Modality'"):
        DicomwebSource("pacs", DicomwebSourceConfig(kind="dicomweb", url="http://h/dicom-web",
                                                    filters={"Modalty": "CT"}))
    with pytest.raises(ConfigError, match="orthanc_url is needed"):
        DicomwebSource("pacs", DicomwebSourceConfig(kind="dicomweb", url="http://h/wado",
                                                    orthanc_changes=True))
    source = DicomwebSource("pacs", DicomwebSourceConfig(kind="dicomweb", url="http://h/dicom-web",
                                                         orthanc_changes=True))
    assert source.orthanc_url == "http://h"
    with pytest.raises(DataError, match="not an Orthanc change number"):
        source.poll("qido:abc")


def test_missing_dicomweb_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dicomweb_client", None)  # as if it were not installed
    with pytest.raises(DependencyMissingError, match=r"medops\[dicom-net\]"):
        DicomwebSource("pacs", DicomwebSourceConfig(kind="dicomweb", url="http://h/dicom-web"))
