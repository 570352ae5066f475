"""The XNAT source and the MONAI download transform, through the real ``xnat`` package, against
a local server that answers the REST calls xnatpy makes (tests/servers/xnat.py)."""

from __future__ import annotations

import io
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("xnat")

import pydicom

from medops.config.sources import XnatSourceConfig
from medops.data.sources.factory import make_remote_source
from medops.data.sources.xnat import XnatSource, XnatSubjectRef, connect, list_subjects
from medops.errors import ConfigError, DataError
from tests.samples import pydicom_file
from tests.servers.xnat import Experiment, FakeXnat, Scan, Subject, running_xnat


def _dicom(name: str) -> bytes:
    return pydicom_file(name).read_bytes()


@pytest.fixture(scope="module")
def server(shared_data: Path) -> Iterator[tuple[str, FakeXnat]]:
    nema = shared_data / "dicom" / "nema_wg04_uncompressed"
    with running_xnat() as (url, fake):
        fake.projects["CHEST"] = [
            Subject("XNAT_S00001", "patient-a", [Experiment("XNAT_E00001", "a-mr", [
                Scan("1", "T1", {"MR_small.dcm": _dicom("MR_small.dcm")}),
                Scan("2", "localizer", {"1.dcm": _dicom("CT_small.dcm")}),
            ])], fields={"diagnosis": "normal"}),
            Subject("XNAT_S00002", "patient-b", [Experiment("XNAT_E00002", "b-ct", [
                Scan("3", "T1", {"a.dcm": (nema / "CT1_UNC.dcm").read_bytes(),
                                 "b.dcm": (nema / "CT2_UNC.dcm").read_bytes()},
                     xsi_type="xnat:ctScanData"),
            ], xsi_type="xnat:ctSessionData")], fields={"diagnosis": "nodule"}),
        ]
        yield url, fake


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_XNAT_USER", "medops")
    monkeypatch.setenv("TEST_XNAT_PASS", "secret")


def _cfg(url: str, **extra: Any) -> XnatSourceConfig:
    return XnatSourceConfig(kind="xnat", url=url, project="CHEST", user_env="TEST_XNAT_USER",
                            password_env="TEST_XNAT_PASS", **extra)


def test_list_subjects_of_a_project(server: tuple[str, FakeXnat], credentials: None) -> None:
    url, _ = server
    session = connect(_cfg(url))
    try:
        subjects = list_subjects(session, "CHEST")
    finally:
        session.disconnect()
    assert sorted((s.id, s.label) for s in subjects) == [("XNAT_S00001", "patient-a"),
                                                         ("XNAT_S00002", "patient-b")]
    assert all(s.uri.endswith(f"/subjects/{s.id}") for s in subjects)


def test_poll_lists_new_scans_then_nothing(server: tuple[str, FakeXnat],
                                           credentials: None) -> None:
    url, _ = server
    source = make_remote_source("pacs", _cfg(url, label_field="diagnosis"))
    assert isinstance(source, XnatSource)
    try:
        first = source.poll(None)
        keys = sorted(o.key for o in first.objects)
        assert keys == ["CHEST/XNAT_S00001/XNAT_E00001/1", "CHEST/XNAT_S00001/XNAT_E00001/2",
                        "CHEST/XNAT_S00002/XNAT_E00002/3"]
        labels = {o.key: o.label for o in first.objects}
        assert labels["CHEST/XNAT_S00002/XNAT_E00002/3"] == "nodule"
        assert source.poll(first.cursor).objects == []
    finally:
        source.close()


def test_a_scan_with_new_files_comes_back(server: tuple[str, FakeXnat],
                                          credentials: None) -> None:
    url, fake = server
    source = XnatSource("pacs", _cfg(url, scan_type="^T1$"))
    try:
        first = source.poll(None)
        assert len(first.objects) == 2  # the localizer is not a T1
        scan = fake.projects["CHEST"][0].experiments[0].scans[0]
        scan.files["extra.dcm"] = _dicom("MR_small.dcm")
        try:
            [changed] = source.poll(first.cursor).objects
        finally:
            del scan.files["extra.dcm"]
        assert changed.key == "CHEST/XNAT_S00001/XNAT_E00001/1"
    finally:
        source.close()


def test_fetch_downloads_the_dicom_files_of_a_scan(server: tuple[str, FakeXnat],
                                                   credentials: None, shared_data: Path) -> None:
    url, _ = server
    source = XnatSource("pacs", _cfg(url))
    try:
        obj = next(o for o in source.poll(None).objects if o.key.endswith("/3"))
        files = dict(source.fetch(obj))
        # A fresh source (another process) fetches by key alone.
        again = XnatSource("pacs", _cfg(url))
        try:
            assert dict(again.fetch(obj)) == files
        finally:
            again.close()
    finally:
        source.close()
    assert sorted(files) == ["a.dcm", "b.dcm"]
    got = pydicom.dcmread(io.BytesIO(files["a.dcm"]))
    want = pydicom.dcmread(shared_data / "dicom" / "nema_wg04_uncompressed" / "CT1_UNC.dcm")
    assert np.array_equal(got.pixel_array, want.pixel_array)


def test_wrong_password_is_a_config_error(server: tuple[str, FakeXnat],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = server
    monkeypatch.setenv("TEST_XNAT_USER", "medops")
    monkeypatch.setenv("TEST_XNAT_PASS", "wrong")
    with pytest.raises(ConfigError, match="refused the login"):
        connect(_cfg(url))


def test_missing_credentials_variable_is_a_config_error(server: tuple[str, FakeXnat],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = server
    monkeypatch.delenv("TEST_XNAT_USER", raising=False)
    with pytest.raises(ConfigError, match="TEST_XNAT_USER"):
        XnatSource("pacs", _cfg(url)).poll(None)


def test_unknown_project_is_a_config_error(server: tuple[str, FakeXnat],
                                           credentials: None) -> None:
    url, _ = server
    source = XnatSource("pacs", _cfg(url).model_copy(update={"project": "NOPE"}))
    try:
        with pytest.raises(ConfigError, match="NOPE"):
            source.poll(None)
    finally:
        source.close()


def test_unreachable_server_is_a_data_error() -> None:
    from tests.servers.orthanc import free_port

    cfg = XnatSourceConfig(kind="xnat", url=f"http://127.0.0.1:{free_port()}", project="P")
    with pytest.raises(DataError, match="cannot be reached"):
        connect(cfg)


# -- the MONAI transform --------------------------------------------------------------------

def _t1(subject: Any) -> tuple[Any, str] | None:
    """An action: the T1 scan of the subject's first session, stored under "image"."""
    for experiment in subject.experiments.values():
        for scan in experiment.scans.values():
            if scan.type == "T1":
                return scan, "image"
    return None


def test_transform_downloads_each_scan_once(server: tuple[str, FakeXnat], credentials: None,
                                            tmp_path: Path) -> None:
    pytest.importorskip("monai")
    from medops.train.xnat_monai import LoadXnatScand

    url, fake = server
    session = connect(_cfg(url))
    try:
        subjects = list_subjects(session, "CHEST")
    finally:
        session.disconnect()
    load = LoadXnatScand(keys="subject", cfg=_cfg(url), actions=[_t1], cache_dir=tmp_path)
    try:
        out = [load({"subject": s}) for s in subjects]
        before = dict(fake.downloads)
        again = [load({"subject": {"uri": s.uri}}) for s in subjects]
    finally:
        load.close()
    assert [o["image"] for o in out] == [o["image"] for o in again]
    assert fake.downloads == before  # the second pass came from the cache
    folder = Path(next(o["image"] for o in out if o["subject"].label == "patient-b"))
    assert folder == tmp_path / "CHEST" / "XNAT_S00002" / "XNAT_E00002" / "3"
    assert sorted(p.name for p in folder.iterdir()) == ["a.dcm", "b.dcm"]
    assert isinstance(out[0]["subject"], XnatSubjectRef)
    assert not list(tmp_path.rglob(".*"))  # no partial download left behind
    # Picklable for DataLoader workers: the connection stays behind.
    clone = pickle.loads(pickle.dumps(load))
    assert clone.cache.root == tmp_path


def test_ingest_remote_stores_every_scan_with_its_label(
        server: tuple[str, FakeXnat], credentials: None, tmp_path: Path,
        shared_data: Path) -> None:
    from medops.config import parse_config
    from medops.data.ingest import IngestSettings, ingest_remote
    from medops.storage import ItemStatus, StateStore

    url, _ = server
    settings = IngestSettings.from_config(parse_config({"project": "p"}).data,
                                          b"xnat-test-secret-0123456789")
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    source = XnatSource("pacs", _cfg(url, label_field="diagnosis"))
    try:
        report = ingest_remote(source, state, tmp_path / "landing", settings)
        assert report.files == 4 and report.quarantined == 0
        items = state.items(source="pacs")
        assert len(items) == 4
        assert {i.label for i in items} == {"normal", "nodule"}
        assert all(i.status is ItemStatus.PENDING for i in items)
        want = pydicom.dcmread(shared_data / "dicom" / "nema_wg04_uncompressed"
                               / "CT1_UNC.dcm").pixel_array
        cts = [pydicom.dcmread(i.uri) for i in items if i.label == "nodule"]
        assert any(np.array_equal(ds.pixel_array, want) for ds in cts)
        assert all(ds.PatientIdentityRemoved == "YES" for ds in cts)
        assert ingest_remote(source, state, tmp_path / "landing", settings).new == 0
    finally:
        source.close()
        state.close()
