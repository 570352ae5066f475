"""A tiny model trained and registered by the real pipeline, and real uvicorn servers for it."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from medops.config.schema import ServeConfig
from medops.demo.synthetic import make_synthetic_dataset
from medops.pipeline import PipelineRunner
from medops.project import Project
from medops.registry import CHAMPION
from tests.pipeline.conftest import make_project

TOKEN = "test-token-0123456789"


@pytest.fixture(scope="session")
def served_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A project whose model version 1 is registered and is the champion."""
    base = tmp_path_factory.mktemp("served")
    data = make_synthetic_dataset(base / "raw", n_patients=12, images_per_patient=3, size=48)
    root = base / "proj"
    Project.init(root, name="test-project")
    shutil.rmtree(root / "data" / "raw")
    shutil.copytree(data.root, root / "data" / "raw")
    project = make_project(root, **{"train.epochs": 1})
    record = PipelineRunner(project).run()
    assert record.status.value == "succeeded", record.error
    project.registry.client.set_registered_model_alias(project.config.model_name, CHAMPION, "1")
    project.registry.download("1")  # once, before servers and tests read the cache together
    return project


def register_copy(project: Project, of: str = "1") -> str:
    """A new version with the same files as ``of`` (a retrain would only cost test time)."""
    v = project.registry.get(of)
    assert v.run_id is not None
    return project.registry.register(v.run_id, v.source, dict(v.tags), alias=None).version


class ServerThread:
    """A real uvicorn server on a free loopback port, in a background thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def wait_ready(client: Any, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get("/readyz")
        if r.status_code == 200:
            return dict(r.json())
        if time.monotonic() > deadline:
            raise AssertionError(f"server not ready: {r.text}")
        time.sleep(0.05)


def serve_config(**overrides: Any) -> ServeConfig:
    base: dict[str, Any] = {"max_body_mb": 1.0, "max_image_pixels": 18_000,
                            "poll_seconds": 0.2, "max_wait_ms": 2.0}
    return ServeConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def server(served_project: Project) -> Iterator[str]:
    """The project's champion behind a token, with capture on; yields the base URL."""
    from medops.monitor import CaptureStore
    from medops.serve import create_app

    app = create_app(served_project.registry, serve_config(),
                     capture=CaptureStore.under(served_project.artifacts), token=TOKEN)
    with ServerThread(app) as url:
        yield url


def png_bytes(size: int = 100, mode: str = "L") -> bytes:
    return _encode(size, mode, "PNG")


def jpeg_bytes(size: int = 100, mode: str = "RGB") -> bytes:
    return _encode(size, mode, "JPEG")


def _encode(size: int, mode: str, fmt: str) -> bytes:
    yy, xx = np.mgrid[0:size, 0:size]
    gray = ((np.sin(xx / 7.0) + np.cos(yy / 11.0) + 2) * 60).astype(np.uint8)
    arr = gray if mode == "L" else np.stack([gray, gray[::-1], gray.T], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def ct_small() -> bytes:
    from tests.samples import pydicom_file

    return pydicom_file("CT_small.dcm").read_bytes()
