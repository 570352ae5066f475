"""A real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``) for tests, on free loopback ports.

Reuse it from any conftest::

    from tests.servers.orthanc import orthanc  # noqa: F401  (the session fixture)

or start a private one (``with running_orthanc(tmp_path) as server: ...``) for a test that stops
it. Each server has its own config and storage in a temporary folder and runs in its own process
group, which teardown stops. Where the binary is missing the fixture skips with the reason,
except under CI (``CI`` set), where it fails: ``scripts/services`` installs it there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins",
               "/usr/local/share/orthanc/plugins")
AET = "ORTHANC"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dicomweb_plugin() -> Path | None:
    for folder in PLUGIN_DIRS:
        path = Path(folder) / "libOrthancDicomWeb.so"
        if path.is_file():
            return path
    return None


def missing_reason() -> str | None:
    """Why no Orthanc can start here, or None."""
    if shutil.which("Orthanc") is None:
        return "the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)"
    if _dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    return None


@dataclass
class OrthancServer:
    url: str  # REST root, e.g. http://127.0.0.1:PORT
    dicom_port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def upload(self, data: bytes) -> str:
        """POST /instances: store one Part-10 file; returns Orthanc's instance id."""
        response = httpx.post(f"{self.url}/instances", content=data, timeout=30)
        response.raise_for_status()
        return str(response.json()["ID"])

    def storescu(self, *paths: Path) -> None:
        """Send files over DICOM networking (C-STORE) with dcmtk's storescu."""
        exe = shutil.which("storescu")
        if exe is None:
            pytest.skip("dcmtk's storescu is not installed (apt-get install dcmtk)")
        done = subprocess.run([exe, "-aec", AET, "127.0.0.1", str(self.dicom_port),
                               *map(str, paths)], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"storescu failed ({done.returncode}): {done.stderr[-2000:]}")

    def last_change(self) -> int:
        return int(httpx.get(f"{self.url}/changes", params={"last": ""}, timeout=10)
                   .json()["Last"])

    def delete_all(self) -> None:
        """Forget every stored instance (keeps the server and its change numbering)."""
        for patient in httpx.get(f"{self.url}/patients", timeout=10).json():
            httpx.delete(f"{self.url}/patients/{patient}", timeout=10).raise_for_status()

    def stop(self) -> None:
        """Kill the process group. Orthanc takes ~4 s to stop gracefully; a test server's
        storage is disposable, and its index (SQLite) survives a kill for a restart."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


def start_orthanc(workdir: Path, timeout: float = 30.0,
                  extra_config: dict[str, object] | None = None) -> OrthancServer:
    """Start Orthanc with its own config and storage under ``workdir``; wait for /system.
    ``extra_config`` adds or overrides settings (e.g. authentication)."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "MEDOPS-TEST", "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"), "HttpPort": http_port, "DicomPort": dicom_port,
        "DicomAet": AET, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "Plugins": [str(_dicomweb_plugin())],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
        "StableAge": 1,
        **(extra_config or {}),
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    log = workdir / "orthanc.log"
    with log.open("wb") as out:
        process = subprocess.Popen(["Orthanc", str(workdir / "orthanc.json")], cwd=workdir,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = OrthancServer(f"http://127.0.0.1:{http_port}", dicom_port, process, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}: "
                               f"{log.read_text()[-2000:]}")
        try:
            # Any answer will do: with authentication on, /system answers 401.
            if httpx.get(f"{server.url}/system", timeout=1).status_code in (200, 401):
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"Orthanc did not answer within {timeout} s: {log.read_text()[-2000:]}")


@contextmanager
def running_orthanc(workdir: Path, extra_config: dict[str, object] | None = None
                    ) -> Iterator[OrthancServer]:
    reason = missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; scripts/services installs it in CI")
        pytest.skip(reason)
    server = start_orthanc(workdir, extra_config=extra_config)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the whole session; tests that need it empty call ``delete_all()``."""
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server
