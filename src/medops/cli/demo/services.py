"""What the demo's loop runs in its own process: `medops serve`'s app under uvicorn, `medops
agent`'s loop, and clients sending images with their ground truth -- each in a thread, each a
context manager that stops it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from medops.demo.synthetic import SyntheticImage
from medops.project import Project

T = TypeVar("T")


def until(cond: Callable[[], T | None], timeout: float) -> T | None:
    """``cond()`` once it is truthy, polled every 0.25 s; None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() > deadline:
            return value or None
        time.sleep(0.25)


class DemoServer:
    """`medops serve`'s app on a free loopback port, in a thread."""

    def __init__(self, project: Project) -> None:
        import uvicorn

        from medops.monitor import CaptureStore
        from medops.serve import create_app

        app = create_app(project.registry, project.config.serve,
                         capture=CaptureStore.under(project.artifacts))
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                     log_level="warning", access_log=False,
                                                     lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, name="demo-serve",
                                        daemon=True)
        self.url = ""

    def __enter__(self) -> DemoServer:
        self._thread.start()
        if not until(lambda: self._server.started or not self._thread.is_alive(), 60) \
                or not self._thread.is_alive():
            raise RuntimeError("the demo's server did not start; see the messages above")
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        if not until(self.version, 120):
            raise RuntimeError("the demo's server loaded no model within 2 minutes")
        return self

    def version(self) -> str | None:
        import httpx

        r = httpx.get(f"{self.url}/readyz", timeout=10)
        return str(r.json()["version"]) if r.status_code == 200 else None

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(30)


class AgentThread:
    """`medops agent`'s loop in a thread (quiet: the demo prints what it decided)."""

    def __init__(self, project: Project) -> None:
        from medops.agent import Agent
        from medops.cli.agent import monitor_job

        self.agent = Agent(project, monitor=monitor_job(project), log_level=logging.WARNING)
        self._thread = threading.Thread(target=self.agent.run, name="demo-agent", daemon=True)

    def __enter__(self) -> AgentThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.agent.request_stop()
        self._thread.join(60)


class Traffic:
    """The new detector's images to the predict route, each answer's ground truth back to
    /v1/feedback: all of them at once, then one every 0.25 s until the block ends."""

    def __init__(self, url: str, model: str, images: Sequence[SyntheticImage]) -> None:
        self.url, self.model, self.images = url, model, list(images)
        self.answers: list[tuple[int, str | None]] = []  # (HTTP status, 0: no answer; version)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="demo-traffic", daemon=True)

    @property
    def failed(self) -> int:
        return sum(1 for status, _ in self.answers if status != 200)

    def versions(self) -> list[str | None]:
        return [v for _, v in self.answers]

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _loop(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                self._send(client, self.images[i % len(self.images)])
                i += 1
                if i >= len(self.images):
                    self._stop.wait(0.25)

    def _send(self, client: Any, image: SyntheticImage) -> None:
        import httpx

        try:
            r = client.post(f"/v1/models/{self.model}/predict", content=image.path.read_bytes(),
                            headers={"content-type": "application/dicom"})
        except httpx.TransportError:
            self.answers.append((0, None))
            return
        body = r.json() if r.status_code == 200 else {}
        self.answers.append((r.status_code, body.get("version")))
        if r.status_code == 200:
            client.post("/v1/feedback", json={"request_id": body["request_id"],
                                              "label": image.label})
