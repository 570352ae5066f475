"""`medops receive` as a real process, fed by dcmtk's storescu/echoscu over loopback.

What a user checks: senders that heard Success have their instances on disk and indexed (even
across kill -9), unknown senders are refused, a full disk refuses instead of accepting, C-ECHO
answers while a big send runs, and completed series become de-identified items.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")

from pydicom.uid import generate_uid  # noqa: E402

from medops.data.scp import InstanceKey, uid_hash  # noqa: E402
from medops.storage import StateStore  # noqa: E402
from medops.storage.received import ReceivedIndex, ReceivedStatus  # noqa: E402
from tests.samples import pydicom_file  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("storescu") is None or shutil.which("echoscu") is None,
    reason="dcmtk (storescu, echoscu) is not installed; scripts/services installs it")

MEDOPS = Path(sys.executable).with_name("medops")
SOURCE = "scanner"
AE = "MEDOPS"
SENDERS = ["STORESCU", "SENDER2", "SENDER3"]


# dcmtk >= 3.6.2 leaves Nagle's algorithm on: each small C-STORE then waits ~40 ms for a delayed
# ACK (dcmtk FAQ #48); real senders are configured the same way for throughput.
_DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


# -- helpers ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _series(folder: Path, n: int, template: str = "CT_small.dcm") -> list[Path]:
    """``n`` instances of one new series: the template with new series and SOP instance UIDs."""
    folder.mkdir(parents=True)
    ds = pydicom.dcmread(pydicom_file(template))
    ds.SeriesInstanceUID = generate_uid()
    paths = []
    for i in range(n):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _key(path: Path) -> InstanceKey:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return InstanceKey.from_uids(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def _project(root: Path, port: int, **source: object) -> Path:
    root.mkdir(parents=True)
    cfg = {"kind": "dicom-scp", "ae_title": AE, "host": "127.0.0.1", "port": port,
           "allowed_calling_aets": SENDERS[:2], "quiet_seconds": 1, "min_free_mb": 0, **source}
    (root / "medops.yaml").write_text(yaml.safe_dump(
        {"project": "rx", "data": {"sources": {SOURCE: cfg}}}))
    return root


class ReceiverProcess:
    """`medops receive` in its own process group, its log in a file."""

    def __init__(self, project: Path, port: int) -> None:
        self.project, self.port = project, port
        self.log = project / f"receive-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ReceiverProcess:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen([str(MEDOPS), "receive", "-C", str(self.project)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the receiver exited ({self.proc.returncode}):\n{self.text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        pytest.fail(f"the receiver did not listen within 60 s:\n{self.text()}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def _storescu(port: int, files: list[Path], aet: str = "STORESCU",
              ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["storescu", "-v", "-aet", aet, "-aec", AE, "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_DCMTK_ENV)


def _acknowledged(output: str) -> tuple[list[str], list[str]]:
    """(files storescu reported Success for, the other responses' texts)."""
    ok: list[str] = []
    other: list[str] = []
    current = None
    for line in output.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("I: Received Store Response"):
            if "(Success)" in line and current is not None:
                ok.append(current)
            else:
                other.append(line)
    return ok, other


def _index(project: Path) -> tuple[StateStore, ReceivedIndex]:
    state = StateStore(f"sqlite:///{project / '.medops' / 'medops.db'}")
    return state, ReceivedIndex(state.db)


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _stored_files(project: Path) -> list[Path]:
    return sorted((project / ".medops" / "received").glob("*/*/*.dcm"))


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("series")
    return {"small": _series(root / "small", 24), "big": _series(root / "big", 250),
            "late": _series(root / "late", 1, "MR_small.dcm")}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    """One receiver that accepts STORESCU and SENDER2, series complete after 2 s."""
    port = _free_port()
    proc = ReceiverProcess(_project(tmp_path_factory.mktemp("rx") / "p", port,
                                    quiet_seconds=2), port).start()
    yield proc
    proc.close()


# -- tests --------------------------------------------------------------------------------------
def test_several_associations_store_and_series_are_ingested(
        receiver: ReceiverProcess, series: dict[str, list[Path]]) -> None:
    ct, mr = (pydicom_file(f) for f in ("CT_small.dcm", "MR_small.dcm"))
    small = series["small"]
    senders = [_storescu(receiver.port, [ct], "STORESCU"),
               _storescu(receiver.port, [mr], "SENDER2"),
               _storescu(receiver.port, small[:12], "STORESCU"),
               _storescu(receiver.port, small[12:], "SENDER2")]
    outputs = [p.communicate(timeout=60)[0] for p in senders]
    assert all(p.returncode == 0 for p in senders), outputs
    sent = [ct, mr, *small]
    acked = [f for out in outputs for f in _acknowledged(out)[0]]
    assert sorted(acked) == sorted(map(str, sent))

    state, index = _index(receiver.project)
    try:
        rows = {r.sop_hash: r for r in index.instances(SOURCE)}
        assert set(rows) == {_key(p).sop_hash for p in sent}
        for path in sent:  # the bytes on disk are the instance that was sent
            row = rows[_key(path).sop_hash]
            stored = pydicom.dcmread(receiver.project / ".medops" / "received" / row.path)
            assert stored.SOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
            assert stored.PixelData == pydicom.dcmread(path).PixelData
            assert row.calling_ae in ("STORESCU", "SENDER2")
        # no UID in any stored path
        uids = {str(pydicom.dcmread(p).SeriesInstanceUID) for p in sent}
        assert not any(u in str(f) for f in _stored_files(receiver.project) for u in uids)

        # a sender sending the same instances again: success, nothing new
        again = _storescu(receiver.port, [ct, small[0]])
        assert again.communicate(timeout=60)[0] and again.returncode == 0
        assert len(index.instances(SOURCE)) == len(sent)

        # three series, each complete after the quiet time: ingested, one event each
        _wait(lambda: index.counts(SOURCE) == {"ingested": len(sent)}, 30, "ingestion")
        items = state.items(source=SOURCE)
        assert len(items) == len(sent)
        assert len({i.series_uid for i in items}) == 3
        assert all(str(receiver.project / ".medops" / "landing") in i.uri for i in items)
        for item in items:  # de-identified on the way in
            ds = pydicom.dcmread(item.uri)
            assert ds.SOPInstanceUID not in {str(pydicom.dcmread(p).SOPInstanceUID)
                                             for p in sent}
        arrived = state.event_log("data.arrived")
        assert sum(e.payload["new"] for e in arrived) == len(sent)
    finally:
        state.close()
    log = receiver.text()
    for path in (ct, mr):  # PHI never logged
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) not in log and ds.SOPInstanceUID not in log
        assert ds.SeriesInstanceUID not in log


def test_unknown_calling_ae_is_refused(receiver: ReceiverProcess, tmp_path: Path) -> None:
    files = _series(tmp_path / "s", 1)
    proc = _storescu(receiver.port, files, aet="INTRUDER")
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0
    assert "Association Rejected" in out and "Calling AE Title Not Recognized" in out, out
    state, index = _index(receiver.project)
    try:
        assert not index.contains(SOURCE, _key(files[0]).sop_hash)
    finally:
        state.close()


def test_undecodable_payload_is_refused_and_nothing_kept(
        receiver: ReceiverProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pynetdicom
    from pynetdicom import _config
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        CTImageStorage,
        Verification,
    )

    good = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    garbage_sop, truncated_sop = generate_uid(), generate_uid()
    garbage = tmp_path / "garbage.dcm"  # a valid Part 10 header over a dataset that is not DICOM
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = good.SOPClassUID
    meta.MediaStorageSOPInstanceUID = garbage_sop
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pydicom.dataset.validate_file_meta(meta)
    with garbage.open("wb") as f:
        f.write(b"\0" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(f, meta)
        f.write(b"\x08\x00\x18\x00UI\xff\x7f" + os.urandom(64))  # a length beyond the data
    truncated = tmp_path / "truncated.dcm"  # a real instance cut off inside its pixel data
    good.SOPInstanceUID = good.file_meta.MediaStorageSOPInstanceUID = truncated_sop
    good.save_as(truncated, enforce_file_format=True)
    truncated.write_bytes(truncated.read_bytes()[:-5000])

    # send the file's bytes as they are, as a broken sender would, instead of parsing them
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    client = pynetdicom.AE(ae_title="STORESCU")
    client.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    client.add_requested_context(Verification)
    assoc = client.associate("127.0.0.1", receiver.port, ae_title=AE)
    assert assoc.is_established
    try:
        assert assoc.send_c_store(garbage).Status == 0xC000
        assert assoc.send_c_store(truncated).Status == 0xC000
        assert assoc.send_c_echo().Status == 0x0000  # the association survives
    finally:
        assoc.release()
    state, index = _index(receiver.project)
    try:
        for sop in (garbage_sop, truncated_sop):
            assert not index.contains(SOURCE, uid_hash(sop))
            assert not any(f.stem == uid_hash(sop) for f in _stored_files(receiver.project))
    finally:
        state.close()


def test_sigterm_flushes_pending_series(receiver: ReceiverProcess,
                                        series: dict[str, list[Path]]) -> None:
    """Runs last against the shared receiver: it stops it."""
    late = series["late"]
    proc = _storescu(receiver.port, late)
    assert proc.communicate(timeout=60)[0] and proc.returncode == 0
    assert receiver.signal(signal.SIGTERM) == 0  # well within the 2 s quiet time
    state, index = _index(receiver.project)
    try:
        assert index.counts(SOURCE).get("received", 0) == 0
        assert [r.status for r in index.instances(SOURCE)
                if r.sop_hash == _key(late[0]).sop_hash] == [ReceivedStatus.INGESTED]
    finally:
        state.close()
    assert "receiver stopped" in receiver.text()


def test_low_disk_refuses_with_out_of_resources(tmp_path: Path) -> None:
    port = _free_port()
    project = _project(tmp_path / "p", port, min_free_mb=10**12)  # more than any disk has
    rx = ReceiverProcess(project, port).start()
    try:
        files = _series(tmp_path / "s", 2)
        proc = _storescu(port, files)
        out = proc.communicate(timeout=60)[0]
        acked, other = _acknowledged(out)
        assert acked == []
        # storescu stops at the first refusal
        assert other == ["I: Received Store Response (Refused: OutOfResources)"], out
        assert _stored_files(project) == []
        state, index = _index(project)
        try:
            assert index.instances(SOURCE) == []
        finally:
            state.close()
    finally:
        rx.close()


def test_kill_9_mid_stream_loses_no_acknowledged_instance(
        tmp_path: Path, series: dict[str, list[Path]]) -> None:
    port = _free_port()
    project = _project(tmp_path / "p", port)
    big = series["big"]
    rx = ReceiverProcess(project, port).start()
    try:
        sender = _storescu(port, big)
        _wait(lambda: len(_stored_files(project)) >= 10, 60, "the first instances")
        echo = subprocess.run(["echoscu", "-aet", "STORESCU", "-aec", AE, "127.0.0.1",
                               str(port)], capture_output=True, text=True, timeout=30)
        assert echo.returncode == 0, echo.stderr
        assert sender.poll() is None, "the send ended before C-ECHO was tried"
        _wait(lambda: len(_stored_files(project)) >= 60, 60, "sixty instances")
        assert rx.signal(signal.SIGKILL) == -signal.SIGKILL
        out = sender.communicate(timeout=60)[0]
    finally:
        rx.close()
    acked, _ = _acknowledged(out)
    assert sender.returncode != 0 and 30 <= len(acked) < len(big), out[-2000:]

    # a crash between rename and index, and one mid-write
    extra = _series(tmp_path / "extra", 1)[0]
    ekey = _key(extra)
    storage = project / ".medops" / "received"
    (storage / ekey.relpath).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(extra, storage / ekey.relpath)
    partial = storage / _key(big[0]).relpath
    partial.with_name(".partial.tmp").write_bytes(b"half")

    rx = ReceiverProcess(project, port).start()
    try:
        state, index = _index(project)
        try:
            rows = {r.sop_hash: r for r in index.instances(SOURCE)}
            for path in map(Path, acked):
                key = _key(path)
                assert key.sop_hash in rows, f"{path.name} was acknowledged but is not indexed"
                assert pydicom.dcmread(storage / key.relpath).PixelData == \
                    pydicom.dcmread(path).PixelData
            assert rows[ekey.sop_hash].calling_ae is None  # indexed at startup
            assert not partial.with_name(".partial.tmp").exists()
            for f in _stored_files(project):  # nothing half-written under a final name
                pydicom.dcmread(f)
            n = len(rows)
            _wait(lambda: index.counts(SOURCE) == {"ingested": n}, 30, "ingestion")
            assert len(state.items(source=SOURCE)) == n
        finally:
            state.close()
        assert rx.signal(signal.SIGTERM) == 0
    finally:
        rx.close()


# -- configuration errors, in process ----------------------------------------------------------
def test_receive_refuses_a_config_that_accepts_no_sender(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app

    project = _project(tmp_path / "p", _free_port(), allowed_calling_aets=[])
    result = CliRunner().invoke(app, ["receive", "-C", str(project)])
    assert result.exit_code == 2
    assert "allowed_calling_aets is empty" in result.output and "--allow" in result.output
    result = CliRunner().invoke(app, ["receive", "-C", str(project), "--source", "pacs"])
    assert result.exit_code == 2 and "no data.sources.pacs" in result.output
    result = CliRunner().invoke(app, ["receive", "-C", str(project), "--allow", "X" * 17])
    assert result.exit_code == 2 and "not a valid AE title" in result.output
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "medops.yaml").write_text("project: bare\n")
    result = CliRunner().invoke(app, ["receive", "-C", str(bare)])
    assert result.exit_code == 2, result.output
    assert "no dicom-scp source" in result.output and "--allow" in result.output
    result = CliRunner().invoke(app, ["receive", "-C", str(project), "--host", "999.1.1.1",
                                      "--allow", "CT01"])
    assert result.exit_code == 2 and "check --host" in " ".join(result.output.split())


def test_keep_received_deletes_ingested_files_and_a_resend_stays_a_duplicate(
        tmp_path: Path) -> None:
    port = _free_port()
    project = _project(tmp_path / "p", port, keep_received="3s")
    files = _series(tmp_path / "s", 3)
    receiver = ReceiverProcess(project, port).start()
    state, index = _index(project)
    try:
        sender = _storescu(port, files)
        assert sender.communicate(timeout=60)[0] and sender.returncode == 0
        # Ingested first (the files, which hold PHI, still there), deleted keep_received later.
        _wait(lambda: index.counts(SOURCE) == {"ingested": 3}, 30, "ingestion")
        assert len(_stored_files(project)) == 3
        _wait(lambda: index.counts(SOURCE) == {"purged": 3}, 30, "the purge")
        assert _stored_files(project) == []
        items = state.items(source=SOURCE)  # the de-identified copies stay
        assert len(items) == 3 and all(Path(i.uri).is_file() for i in items)

        # Sent again after the purge: acknowledged, but a duplicate, not new data.
        again = _storescu(port, files)
        output = again.communicate(timeout=60)[0]
        assert again.returncode == 0 and len(_acknowledged(output)[0]) == 3, output
        time.sleep(2)  # longer than quiet_seconds: a new series would be ingested by now
        assert index.counts(SOURCE) == {"purged": 3}
        assert _stored_files(project) == [] and len(state.items(source=SOURCE)) == 3
    finally:
        state.close()
        assert receiver.signal(signal.SIGTERM) == 0
    assert "deleted 3 received file(s)" in receiver.text()
    # The next start removes the folders the purge left empty.
    ReceiverProcess(project, port).start().signal(signal.SIGTERM)
    assert list((project / ".medops" / "received").iterdir()) == []
