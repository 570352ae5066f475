"""`medops serve` as a process: the SageMaker container contract (ping, invocations, SIGTERM)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from medops.project import Project

from .conftest import ct_small

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_command_answers_and_stops_on_sigterm(served_project: Project) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "medops.cli", "serve", "-C", str(served_project.root),
         "--port", str(port), "--host", "127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=5) as c:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
                try:
                    started = time.monotonic()
                    r = c.get("/ping")
                    assert time.monotonic() - started < 2.0
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "medops serve never became ready"
                time.sleep(0.1)
            r = c.post("/invocations", content=ct_small(),
                       headers={"content-type": "application/dicom"})
            assert r.status_code == 200, r.text
            assert r.json()["version"] == "1"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert time.monotonic() - started < 30
        log = proc.stdout.read().decode()  # type: ignore[union-attr]
        # uvicorn re-raises the signal once it has shut down cleanly (so does the exit code).
        assert code in (0, -signal.SIGTERM), log
        assert "Application shutdown complete" in log
        # its shutdown wrote the minute's serving figures (medops.serve.stats)
        from medops.storage.serving import ServingStats

        series = ServingStats(served_project.state.db).series(
            served_project.config.model_name, since=datetime.now(timezone.utc) - timedelta(5))
        assert sum(w.requests for w in series) >= 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]


def test_serve_refuses_an_unset_token_variable(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app

    Project.init(tmp_path, name="tok")
    with (tmp_path / "medops.yaml").open("a") as f:
        f.write("serve: {token_env: MEDOPS_NO_SUCH_TOKEN_VAR}\n")
    result = CliRunner().invoke(app, ["serve", "-C", str(tmp_path)],
                                env={"MEDOPS_NO_SUCH_TOKEN_VAR": ""})
    assert result.exit_code == 2, result.output
    assert "MEDOPS_NO_SUCH_TOKEN_VAR" in result.output


def test_serve_refuses_a_version_that_does_not_exist(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app

    Project.init(tmp_path, name="pin")
    result = CliRunner().invoke(app, ["serve", "-C", str(tmp_path), "--model",
                                      "pin-classifier/99"])
    assert result.exit_code == 4, result.output  # not found, instead of waiting forever
    assert "has no version '99'" in result.output


def test_serve_on_a_port_in_use_says_so_before_loading_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app

    Project.init(tmp_path, name="busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "-C", str(tmp_path), "--host", "127.0.0.1",
                                          "--port", str(port)])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert f"cannot listen on 127.0.0.1:{port}" in said and "--port" in said
