"""A team on several machines sharing one state: PostgreSQL for medops' state, an authenticated
`mlflow server` (basic auth, PostgreSQL backend, artifacts proxied to S3) for tracking and the
registry, and an S3 bucket (moto's server) as the artifact root. Each "machine" is a separate
project folder with the same medops.yaml and no shared local state: nothing but the three
services and the images (a shared read-only folder, as a data mount) connects them.

- a researcher's folder runs `medops run`: version 1, pending;
- the team server (`medops server`, its own folder) takes the approver's sign-off over HTTP; a
  viewer's is refused;
- a serving box (`medops serve`, its own folder) serves the champion and captures its traffic
  to S3;
- a GPU box's agent (`medops agent`, its own folder) trains version 2 on a request made from
  the researcher's folder; the approver signs it off with `medops models approve` through the
  server, and the running server swaps to it;
- a monitoring box (`medops monitor`, its own folder) reads the serving box's captures from S3;
- batch-predict runs on the serving box's folder;
- no credential appears in any process's log or in any MLflow parameter of the runs.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from medops.demo.synthetic import make_synthetic_dataset
from tests.agent.conftest import MEDOPS, AgentProcess, MedopsProcess, make_agent_project, wait_for
from tests.conftest import _postgres_database
from tests.servers.mlflow import MotoS3, moto_s3, running_mlflow

from .conftest import ServeProcess, Traffic, free_port

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NAME = "team-classifier"
CAPTURED = 24  # predictions the serving box answers (and captures) before the monitor runs


_database = contextmanager(_postgres_database)


def _settings(state: str, tracking: str, shared_images: Path) -> dict[str, Any]:
    return {
        "executor.kind": "serial",
        "gate.must_beat_champion": False,
        "storage.state": state,
        "storage.tracking": tracking,
        "storage.artifacts": "s3://medops/team",
        "data.source.path": str(shared_images),
        # no automatic runs: the agent trains on request only
        "triggers": [{"on": "run.requested"}],
        "serve.poll_seconds": 0.5,
        "monitor.min_samples": 10,
        "monitor.window": "1h",
    }


class ServerProcess(MedopsProcess):
    """`medops server` (API and dashboard) on a free loopback port."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, "server")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> ServerProcess:
        proc = self.launch("server", "--host", "127.0.0.1", "--port", str(self.port),
                           "-C", str(self.root))

        def healthy() -> bool:
            try:
                return httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout, f"medops server healthy\n{self.tail()}", proc=proc)
        return self


def _medops(root: Path, *args: str, stdin: str | None = None, timeout: float = 600,
            env: dict[str, str] | None = None, secret_output: bool = False) -> str:
    """Run a command; its output is kept in a log file in ``root`` (the standard output too,
    unless it is a secret the command exists to print)."""
    out = subprocess.run([MEDOPS, *args, "-C", str(root)], input=stdin, capture_output=True,
                         text=True, timeout=timeout, env=env)
    log = root / f"cli-{args[0]}-{len(list(root.glob('cli-*.log')))}.log"
    log.write_text(("" if secret_output else out.stdout) + out.stderr)
    assert out.returncode == 0, f"medops {' '.join(args)}: {out.returncode}\n{out.stderr[-3000:]}"
    return out.stdout


def _login(server: ServerProcess, user: str, password: str) -> str:
    r = httpx.post(f"{server.url}/api/login", json={"user": user, "password": password},
                   timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def _approve(server: ServerProcess, token: str, version: str) -> httpx.Response:
    return httpx.post(f"{server.url}/api/models/{NAME}/versions/{version}/approve",
                      json={"note": "reviewed on the site's validation set"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _mlflow_params(tracking: str, password: str) -> list[dict[str, str]]:
    """Every parameter and tag of every run of the project's experiment, over HTTP."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking)
    experiments = client.search_experiments()
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert runs, "no MLflow run was recorded"
    return [{**r.data.params, **r.data.tags} for r in runs]


def test_a_team_runs_the_lifecycle_across_machines(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_synthetic_dataset(tmp_path / "images", n_patients=16, images_per_patient=3,
                                    size=48, seed=0, corrupt_examples=False)
    aws_secret = secrets.token_urlsafe(24)
    with _database() as state, _database() as mlflow_db, moto_s3("mlflow") as s3, \
            running_mlflow(tmp_path / "mlflow", mlflow_db, s3) as mlflow:
        _bucket(s3, "medops")
        # Every machine's environment: the credentials live here, never in medops.yaml.
        for key, value in {"MLFLOW_TRACKING_USERNAME": mlflow.username,
                           "MLFLOW_TRACKING_PASSWORD": mlflow.password,
                           "AWS_ACCESS_KEY_ID": "team-key", "AWS_SECRET_ACCESS_KEY": aws_secret,
                           "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_ENDPOINT_URL": s3.endpoint}.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("MEDOPS_TOKEN", raising=False)
        settings = _settings(state, mlflow.url, images.root)

        def machine(name: str) -> Path:
            return make_agent_project(tmp_path / name, name="team", settings=settings)

        researcher, hub, serving, gpu, watcher = (machine(n) for n in (
            "researcher", "hub", "serving", "gpu", "watcher"))
        started: list[MedopsProcess] = []
        try:
            # 1. The researcher trains version 1.
            _medops(researcher, "run")
            versions = json.loads(_medops(researcher, "models", "ls", "--json"))
            assert [v["version"] for v in versions] == ["1"], versions

            # 2. The team server; an approver and a viewer; the viewer may not sign off.
            passwords = {u: secrets.token_urlsafe(16) for u in ("dr-lee", "student")}
            _medops(hub, "server", "users", "add", "dr-lee", "--role", "approver",
                    "--password-stdin", stdin=passwords["dr-lee"] + "\n")
            _medops(hub, "server", "users", "add", "student", "--role", "viewer",
                    "--password-stdin", stdin=passwords["student"] + "\n")
            server = ServerProcess(hub)
            started.append(server)
            server.start()
            viewer = _login(server, "student", passwords["student"])
            assert _approve(server, viewer, "1").status_code == 403
            approver = _login(server, "dr-lee", passwords["dr-lee"])
            approved = _approve(server, approver, "1")
            assert approved.status_code == 200, approved.text
            assert approved.json()["actor"] == "dr-lee"

            # 3. The serving box serves the champion and captures to S3.
            serve = ServeProcess(serving)
            started.append(serve)
            serve.start()
            assert serve.ready_version() == "1"
            traffic = Traffic(serve.url, NAME, feedback=False)
            traffic.send_all(images.images[:CAPTURED])
            assert traffic.failures() == []

            # 4. The GPU box's agent trains version 2 on a request from the researcher.
            agent = AgentProcess(gpu)
            started.append(agent)
            agent.start()
            _medops(researcher, "agent", "request", "--reason", "new annotations")
            wait_for(lambda: len(json.loads(_medops(researcher, "models", "ls", "--json")))
                     == 2, 600, f"version 2 from the agent\n{agent.tail()}")

            # 5. The approver signs it off from the CLI, through the server; serving swaps.
            token = _medops(hub, "server", "tokens", "create", "dr-lee-laptop", "--role",
                            "approver", secret_output=True).strip()
            cli_env = {**os.environ, "MEDOPS_TOKEN": token}
            _set_server(researcher, server.url)
            _medops(researcher, "models", "approve", NAME, "2", "--note", "second look",
                    env=cli_env)
            wait_for(lambda: serve.ready_version() == "2", 120,
                     f"the serving box on version 2\n{serve.tail()}")
            history = httpx.get(f"{server.url}/api/models/{NAME}/history", timeout=30,
                                headers={"Authorization": f"Bearer {viewer}"}).json()
            assert [(d["version"], d["actor"]) for d in history["deployments"]] == [
                ("1", "dr-lee"), ("2", "token:dr-lee-laptop")], history
            traffic.send_all(images.images[CAPTURED:CAPTURED + 4])
            traffic.stop()
            assert traffic.failures() == []

            # 6. The monitoring box reads the serving box's captures from S3.
            checked = json.loads(_medops(watcher, "monitor", "--version", "1", "--json"))
            assert checked["n_current"] == CAPTURED, checked

            # 7. Batch inference on the serving box.
            out = serving / "batch-out"
            _medops(serving, "batch-predict", str(images.root), "--out", str(out))
            assert list(out.rglob("*.parquet")), list(out.rglob("*"))
        finally:
            for process in started:
                process.cleanup()

        # 8. No credential in any log line or MLflow parameter.
        secrets_used = [mlflow.password, aws_secret, *passwords.values(), token]
        logs = [p for p in tmp_path.rglob("*.log") if "mlflow" not in p.parts]
        for log in logs:
            text = log.read_text(errors="replace")
            assert not [s for s in secrets_used if s in text], f"a credential in {log}"
        for values in _mlflow_params(mlflow.url, mlflow.password):
            text = json.dumps(values)
            assert not [s for s in secrets_used if s in text], values


def _bucket(s3: MotoS3, name: str) -> None:
    s3.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]


def _set_server(root: Path, url: str) -> None:
    import yaml

    path = root / "medops.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["server"] = {"url": url}
    path.write_text(yaml.safe_dump(raw))
