"""The whole loop as users run it: a real `medops serve` and a real `medops agent` on one
project, HTTP clients sending images and their ground truth, files landing in the watched
folder, and a loopback webhook receiving the notifications."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from medops.demo.synthetic import SyntheticImage
from tests.agent.conftest import MedopsProcess, agents, wait_for, webhook

__all__ = ["ServeProcess", "Traffic", "agents", "servers", "webhook"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess(MedopsProcess):
    """`medops serve` on the project at ``root``, on a free loopback port."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "serve")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> ServeProcess:
        proc = self.launch("serve", "-C", str(self.root), "--host", "127.0.0.1",
                           "--port", str(self.port))
        wait_for(lambda: self.ready_version() is not None, timeout,
                 f"medops serve ready\n{self.tail()}", proc=proc)
        return self

    def ready_version(self) -> str | None:
        """The version /readyz reports, None while the server is not ready."""
        try:
            r = httpx.get(f"{self.url}/readyz", timeout=5)
        except httpx.TransportError:
            return None
        return str(r.json()["version"]) if r.status_code == 200 else None


@pytest.fixture
def servers() -> Iterator[Callable[[Path], ServeProcess]]:
    started: list[ServeProcess] = []

    def start(root: Path) -> ServeProcess:
        server = ServeProcess(root)
        started.append(server)  # before it is up: a failed start is cleaned up too
        return server.start()

    yield start
    for server in started:
        server.cleanup()


class Traffic:
    """Clients of the live model: each image's DICOM file to the predict route and then, as a
    radiologist reading the answer would, its ground truth to POST /v1/feedback. Every answer
    is kept, failures included: (HTTP status or 0 for a transport error, model version)."""

    def __init__(self, url: str, model: str, feedback: bool) -> None:
        self.client = httpx.Client(base_url=url, timeout=30)
        self.model = model
        self.feedback = feedback
        self.answers: list[tuple[int, str | None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def send(self, image: SyntheticImage) -> None:
        try:
            r = self.client.post(f"/v1/models/{self.model}/predict",
                                 content=image.path.read_bytes(),
                                 headers={"content-type": "application/dicom"})
        except httpx.TransportError:
            self.answers.append((0, None))
            return
        body = r.json() if r.status_code == 200 else {}
        self.answers.append((r.status_code, body.get("version")))
        if r.status_code == 200 and self.feedback:
            f = self.client.post("/v1/feedback", json={"request_id": body["request_id"],
                                                      "label": image.label})
            assert f.status_code == 202, f.text

    def send_all(self, images: Sequence[SyntheticImage]) -> None:
        for image in images:
            self.send(image)

    def start(self, images: Sequence[SyntheticImage], pause: float) -> None:
        """Send ``images`` over and over in a thread, ``pause`` seconds apart, until stop()."""
        def loop() -> None:
            i = 0
            while not self._stop.is_set():
                self.send(images[i % len(images)])
                i += 1
                self._stop.wait(pause)

        self._thread = threading.Thread(target=loop, name="traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        self.client.close()

    def versions(self) -> list[str | None]:
        return [v for _, v in self.answers]

    def failures(self) -> list[tuple[int, str | None]]:
        return [a for a in self.answers if a[0] != 200]
