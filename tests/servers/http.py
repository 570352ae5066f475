"""A wire-format fake on a free loopback port, served from a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def serve_in_thread(handler: type[BaseHTTPRequestHandler], fake: Any) -> Iterator[str]:
    """The base URL of ``handler`` serving ``fake`` (its ``fake`` attribute); stopped on exit."""
    bound = type("Handler", (handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), bound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
