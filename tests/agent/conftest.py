"""The agent as users run it: a real `medops agent` process on a real project, plus a real
loopback webhook receiving its notifications."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from medops.config import set_dotted
from medops.demo.synthetic import SyntheticDataset, make_synthetic_dataset
from medops.project import Project
from medops.storage import RunRecord, StateStore
from tests.pipeline.conftest import FAST

MEDOPS = str(Path(sys.executable).parent / "medops")
# Quick to react, nothing held back unless a test says so.
AGENT_FAST: dict[str, Any] = {
    **FAST,
    "train.epochs": 2,
    "model.small_input": False,  # the stride-2 stem: 16x less work on 32 px images
    "agent.cooldown": 0,
    "agent.poll_interval": 0.1,
    "agent.watch_quiet": 0.2,
    "agent.stop_timeout": 10,
    "triggers": [{"on": "run.requested"}],
}


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("agent-data") / "raw",
                                  n_patients=20, images_per_patient=3, size=48)


def make_agent_project(root: Path, data: Path | None = None, name: str = "agent-test",
                       settings: Mapping[str, Any] | None = None) -> Path:
    """A project folder whose medops.yaml holds AGENT_FAST plus ``settings`` (dotted keys)."""
    Project.init(root, name=name)
    raw = yaml.safe_load((root / "medops.yaml").read_text())
    for dotted, value in {**AGENT_FAST, **(settings or {})}.items():
        set_dotted(raw, dotted, value)
    (root / "medops.yaml").write_text(yaml.safe_dump(raw))
    if data is not None:
        shutil.rmtree(root / "data" / "raw")
        shutil.copytree(data, root / "data" / "raw")
    return root


class MedopsProcess:
    """A `medops` command in its own session (so teardown can stop everything it started),
    logging to a file in the project."""

    def __init__(self, root: Path, command: str) -> None:
        self.root = root
        self.log = root / f"{command}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def launch(self, *args: str) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([MEDOPS, *args], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self.proc

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self) -> str:
        return "\n".join(self.text().splitlines()[-30:])

    def cleanup(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


class AgentProcess(MedopsProcess):
    """`medops agent` on the project at ``root``."""

    def __init__(self, root: Path, *args: str) -> None:
        super().__init__(root, "agent")
        self.args = args

    def start(self, timeout: float = 300) -> AgentProcess:
        proc = self.launch("agent", "-C", str(self.root), *self.args)
        # "warm": the run processes' imports are done, so what a test times is the agent's
        # own behaviour, not torch's import on a busy machine.
        wait_for(lambda: "warm in" in self.text(), timeout, f"agent warm\n{self.tail()}",
                 proc=proc)
        return self

    def kill(self) -> None:
        """SIGKILL the agent alone: its run child must notice and die by itself."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self, timeout: float) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def agents() -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(root: Path, *args: str) -> AgentProcess:
        agent = AgentProcess(root, *args)
        started.append(agent)  # before it is up: a failed start is cleaned up too
        return agent.start()

    yield start
    for agent in started:
        agent.cleanup()


def wait_for(cond: Callable[[], Any], timeout: float, what: str,
             proc: subprocess.Popen[bytes] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} waiting for {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def runs_of(root: Path) -> list[RunRecord]:
    """The runs in the project's state store, newest first."""
    state = StateStore(f"sqlite:///{root / '.medops' / 'medops.db'}")
    try:
        return state.list_runs(100)
    finally:
        state.close()


def events(root: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """`medops events ls --json`, as a user reads it."""
    cmd = [MEDOPS, "events", "ls", "-C", str(root), "--json", "--limit", "500"]
    out = subprocess.run(cmd + (["--kind", kind] if kind else []), check=True,
                         capture_output=True, text=True, timeout=60)
    return list(json.loads(out.stdout))


class Webhook:
    """A real HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []  # type: list[dict[str, Any]]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()
