"""Reaching an MLflow tracking server: a dead address fails in seconds with the fix."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest

from medops.errors import RegistryError
from medops.registry import Tracker


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


def test_no_server_at_the_tracking_uri_fails_at_once_without_credentials(tmp_path: Path) -> None:
    uri = f"http://alice:s3cret@127.0.0.1:{_dead_port()}"
    started = time.monotonic()
    with pytest.raises(RegistryError, match=r"cannot reach the MLflow server at "
                       r"http://127\.0\.0\.1:\d+ \(storage\.tracking\).*server is running") as err:
        Tracker(uri, "p", tmp_path)
    assert time.monotonic() - started < 10  # MLflow's own retries take ~4 minutes
    assert "s3cret" not in str(err.value)


def test_a_server_that_answers_is_used(tmp_path: Path, health_server: str) -> None:
    tracker = Tracker(health_server + "/", "p", tmp_path)
    assert tracker.tracking_uri == health_server + "/"
