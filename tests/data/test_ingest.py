"""The ingester end to end: a real RemoteSource over a local folder, a real SQLite state store,
real DICOM files carrying a recognisable patient name that must end up nowhere."""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from medops.config import parse_config
from medops.data.ingest import IngestSettings, ingest_files, ingest_remote
from medops.data.sources.remote import PollResult, RemoteObject
from medops.storage import ItemStatus, StateStore
from tests.samples import pydicom_file

PHI_NAME = "Zebrafinch^Philomena"
PHI_FILE = "Zebrafinch_Philomena.dcm"  # sources often name files after the patient
SECRET = b"ingest-test-secret-0123456789"


class FolderRemoteSource:
    """A RemoteSource over ``root/<label>/<file>``: objects in name order, ``page`` per poll,
    the cursor being how many objects were handed out. ``fail_on`` makes one fetch fail, as a
    source that goes away mid-listing."""

    def __init__(self, name: str, root: Path, page: int = 2, fail_on: str | None = None) -> None:
        self.name = name
        self.root = root
        self.page = page
        self.fail_on = fail_on
        self.polled: list[str | None] = []

    def _keys(self) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                      if p.is_file())

    def poll(self, cursor: str | None) -> PollResult:
        self.polled.append(cursor)
        keys = self._keys()
        start = int(cursor) if cursor else 0
        chunk = keys[start:start + self.page]
        objects = [RemoteObject(key=k, version=str((self.root / k).stat().st_mtime_ns),
                                label=k.split("/")[0]) for k in chunk]
        end = start + len(chunk)
        return PollResult(objects=objects, cursor=str(end) if chunk else cursor,
                          more=end < len(keys))

    def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
        if obj.key == self.fail_on:
            raise ConnectionError("the source went away")
        yield obj.key.split("/")[-1], (self.root / obj.key).read_bytes()


def _with_phi(src: str | Path, dest: Path, **tags: object) -> None:
    ds = pydicom.dcmread(src)
    ds.PatientName = PHI_NAME
    ds.PatientID = "MRN-7731-ZEBRA"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=False)


@pytest.fixture
def folder(tmp_path: Path, shared_data: Path) -> Path:
    """8 objects: 5 DICOM images to keep, a PNG, a text file, a burned-in image,
    and an NM image that data.select (CT, MR, CR) leaves out."""
    root = tmp_path / "remote"
    _with_phi(pydicom_file("CT_small.dcm"), root / "a" / PHI_FILE)
    _with_phi(pydicom_file("MR_small.dcm"), root / "b" / "mr.dcm")
    nema = shared_data / "dicom" / "nema_wg04_uncompressed"
    _with_phi(nema / "CT1_UNC.dcm", root / "a" / "ct1.dcm")
    _with_phi(nema / "MR1_UNC.dcm", root / "b" / "mr1.dcm")
    _with_phi(nema / "NM1_UNC.dcm", root / "b" / "nm1.dcm")
    _with_phi(pydicom_file("MR_small.dcm"), root / "b" / "mr_burned.dcm",
              BurnedInAnnotation="YES", SOPInstanceUID="1.2.826.0.1.3680043.8.498.1")
    shutil.copy(shared_data / "xray" / "00000001_000.png", root / "a" / "xray.png")
    (root / "b" / "notes.txt").write_text(f"referral for {PHI_NAME}\n")
    return root


@pytest.fixture
def settings() -> IngestSettings:
    data = parse_config({"project": "p", "data": {"select": {"modality": ["CT", "MR", "CR"]}}})
    return IngestSettings.from_config(data.data, SECRET)


def _db_bytes(url: str) -> bytes:
    path = Path(url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_ingest_remote_selects_deidentifies_and_lands(
        folder: Path, settings: IngestSettings, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    state = StateStore(url)
    landing = tmp_path / "landing"
    source = FolderRemoteSource("pacs", folder, page=3)
    report = ingest_remote(source, state, landing, settings)

    assert report.polls == 3 and source.polled == [None, "3", "6"]
    assert report.cursor == "8" and state.get_cursor("pacs") == "8"
    assert report.files == 8
    assert sum(report.skipped.values()) == 1 and "modality NM" in next(iter(report.skipped))
    items = state.items(source="pacs")
    ok = [i for i in items if i.status is ItemStatus.PENDING]
    bad = {i.reason.split(": ", 1)[1].split(" ")[0]: i for i in items
           if i.status is ItemStatus.QUARANTINED and i.reason}
    assert len(ok) == 5 and len(bad) == 2 and report.quarantined == 2
    assert "BurnedInAnnotation" in bad and "not" in bad
    assert {i.label for i in ok} == {"a", "b"}

    landed = sorted((landing / "pacs").iterdir())
    assert len(landed) == 5
    for path in landed:
        data = path.read_bytes()
        assert path.stem == hashlib.sha256(data).hexdigest()
        assert PHI_NAME.split("^")[0].encode() not in data
        if path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            assert ds.PatientIdentityRemoved == "YES" and ds.StudyInstanceUID.startswith("2.25.")
    # PHI is in no log line, no message and nowhere in the state database.
    everything = caplog.text + "".join(i.reason or "" for i in items)
    assert "Zebrafinch" not in everything and "MRN-7731" not in everything
    assert "quarantined pacs:" in caplog.text  # files are named by pseudonymous keys
    state.close()
    db = _db_bytes(url)
    assert b"Zebrafinch" not in db and b"MRN-7731" not in db and b"Philomena" not in db

    events = state.event_log("data.arrived")
    assert len(events) == 3  # one per poll that moved the cursor
    assert sum(e.payload["new"] for e in events) == 7


def test_resume_after_a_crash_adds_no_duplicates(
        folder: Path, settings: IngestSettings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    landing = tmp_path / "landing"
    keys = FolderRemoteSource("pacs", folder)._keys()

    # The source goes away on the 4th object: poll 2 is half done.
    crashing = FolderRemoteSource("pacs", folder, page=2, fail_on=keys[3])
    state = StateStore(url)
    with pytest.raises(ConnectionError):
        ingest_remote(crashing, state, landing, settings)
    assert state.get_cursor("pacs") == "2"  # not past what was fetched
    assert len(state.event_log("data.arrived")) == 1
    partial = len(state.items(source="pacs"))
    assert partial >= 2  # poll 1, and what poll 2 fetched before the failure, are indexed

    # The process dies after the items of poll 3 are stored but before its cursor is.
    class DiesBeforeCursor(StateStore):
        def set_cursor(self, source: str, cursor: str) -> None:
            if cursor == "6":
                raise KeyboardInterrupt  # as a SIGINT/kill would, mid-ingest
            super().set_cursor(source, cursor)

    dying = DiesBeforeCursor(url)
    with pytest.raises(KeyboardInterrupt):
        ingest_remote(FolderRemoteSource("pacs", folder, page=2), dying, landing, settings)
    assert dying.get_cursor("pacs") == "4"
    dying.close()

    state = StateStore(url)
    source = FolderRemoteSource("pacs", folder, page=2)
    report = ingest_remote(source, state, landing, settings)
    assert source.polled[0] == "4" and report.cursor == "8"
    items = state.items(source="pacs")
    assert len(items) == 7 and len({(i.uri, i.frame) for i in items}) == 7
    events = state.event_log("data.arrived")
    assert len(events) == 4  # one per page, none twice
    assert len(list((landing / "pacs").iterdir())) == 5
    assert not list((landing / "pacs").glob(".*.tmp"))

    again = ingest_remote(FolderRemoteSource("pacs", folder, page=2), state, landing, settings)
    assert again.polls == 1 and again.new == 0 and again.events == 0


def test_ingest_files_for_push_sources(settings: IngestSettings, tmp_path: Path) -> None:
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    files = []
    for name in ("CT_small.dcm", "MR_small.dcm"):
        _with_phi(pydicom_file(name), tmp_path / "in" / name)
        files.append((name, (tmp_path / "in" / name).read_bytes()))
    report = ingest_files(files, "scp", state, tmp_path / "landing", settings, label="x")
    assert (report.files, report.new, report.events) == (2, 2, 1)
    items = state.items(source="scp")
    assert {i.label for i in items} == {"x"} and all(i.patient_id for i in items)
    assert items[0].patient_id == items[1].patient_id  # one patient, one pseudonym
    again = ingest_files(files, "scp", state, tmp_path / "landing", settings, label="x")
    assert (again.new, again.events) == (0, 0)
    assert len(state.event_log("data.arrived")) == 1


def test_deid_off_keeps_files_as_they_came(tmp_path: Path) -> None:
    data = parse_config({"project": "p", "data": {"deid": {"enabled": False}}}).data
    settings = IngestSettings.from_config(data, None)
    raw = pydicom_file("CT_small.dcm").read_bytes()
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    ingest_files([("ct.dcm", raw)], "local", state, tmp_path / "landing", settings)
    (landed,) = (tmp_path / "landing" / "local").iterdir()
    assert landed.read_bytes() == raw
