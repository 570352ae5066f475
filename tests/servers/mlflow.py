"""A real MLflow tracking server for tests: ``mlflow server --app-name basic-auth`` on PostgreSQL,
with its artifacts proxied (``--serve-artifacts``) to an S3 bucket on moto's S3 server.

This is the server a team runs (see ``medops server init``), started as a plain process::

    from tests.servers.mlflow import mlflow_server  # noqa: F401  (the session fixture)

    def test_against_mlflow(mlflow_server: MlflowServer) -> None:
        with mlflow_server.client_env():  # MLFLOW_TRACKING_URI/USERNAME/PASSWORD
            ...

or, for a test that stops or restarts it, a private one::

    with moto_s3() as s3, running_mlflow(tmp_path, database_uri, s3) as server:
        server.restart()  # same port, same database and bucket: clients keep working

Each server has a generated admin password (MLflow has no default one), its own Flask secret
key, ``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`` (2 processes instead of 9, healthy in about
6 s) and runs in its own process group, which ``stop()`` ends: ``mlflow server`` leaves orphan
workers behind when only its first process is killed. The PostgreSQL database comes from
``tests/conftest.py``'s ``_postgres_database`` (a fresh one per fixture).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.servers.moto import moto_endpoint
from tests.servers.processes import stop_group

ADMIN = "admin"
BUCKET = "mlflow"
#: Credentials moto accepts; the server reads them from its environment like any boto3 client.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoS3:
    """moto's S3 in server mode on a free loopback port, with one empty bucket."""

    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    def client(self) -> object:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"])

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in the bucket."""
        pages = self.client().get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        return [o["Key"] for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
                for o in page.get("Contents", [])]


@contextmanager
def moto_s3(bucket: str = BUCKET) -> Iterator[MotoS3]:
    with moto_endpoint() as endpoint:
        s3 = MotoS3(endpoint, bucket)
        s3.client().create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
        yield s3


@dataclass
class MlflowServer:
    """A running ``mlflow server``; ``url`` includes the static prefix, if any."""

    workdir: Path
    port: int
    database_uri: str
    s3: MotoS3
    password: str  # the admin's, generated
    static_prefix: str = ""
    allowed_hosts: tuple[str, ...] = ()
    username: str = ADMIN
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.static_prefix}"

    @property
    def log(self) -> Path:
        return self.workdir / f"mlflow-{self.starts}.log"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def environment(self) -> dict[str, str]:
        """The server process's environment (the secrets included)."""
        ini = self.workdir / "auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = {self.database_uri}\nadmin_username = {ADMIN}\n"
                       "authorization_function = "
                       "mlflow.server.auth:authenticate_request_basic_auth\n")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("MLFLOW_", "AWS_"))}
        return {**env, **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": self.s3.endpoint,
                "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def command(self) -> list[str]:
        hosts = ",".join((f"127.0.0.1:{self.port}", "127.0.0.1", *self.allowed_hosts))
        cmd = [str(Path(sys.executable).with_name("mlflow")), "server",
               "--app-name", "basic-auth", "--backend-store-uri", self.database_uri,
               "--artifacts-destination", f"s3://{self.s3.bucket}/mlflow", "--serve-artifacts",
               "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
               "--allowed-hosts", hosts]
        if self.static_prefix:
            cmd += ["--static-prefix", self.static_prefix]
        return cmd

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.command(), cwd=self.workdir,
                                            env=self.environment(), stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: "
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy within {timeout} s: "
                           f"{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the process group, SIGKILL after 15 s; idempotent."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        stop_group(proc)
        self._reap_group(proc.pid)

    def kill(self) -> None:
        """SIGKILL the whole group at once, as a crash would."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            self._reap_group(proc.pid)

    def restart(self, timeout: float = 60.0) -> None:
        """Stop, then start again on the same port, database and bucket."""
        self.stop()
        self.start(timeout)

    @staticmethod
    def _reap_group(pgid: int) -> None:
        """Workers that outlive the group leader still hold the port: end them too."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def create_user(self, name: str, password: str) -> None:
        """A new MLflow user (the admin's credentials), e.g. for a machine or a person."""
        r = httpx.post(f"{self.url}/api/2.0/mlflow/users/create", auth=self.auth, timeout=10,
                       json={"username": name, "password": password})
        r.raise_for_status()

    @contextmanager
    def client_env(self, username: str | None = None,
                   password: str | None = None) -> Iterator[None]:
        """MLFLOW_TRACKING_URI and the credentials in this process's environment."""
        values = {"MLFLOW_TRACKING_URI": self.url,
                  "MLFLOW_TRACKING_USERNAME": username or self.username,
                  "MLFLOW_TRACKING_PASSWORD": password or self.password}
        with pytest.MonkeyPatch.context() as mp:
            for key, value in values.items():
                mp.setenv(key, value)
            yield


def start_mlflow(workdir: Path, database_uri: str, s3: MotoS3, *, static_prefix: str = "",
                 allowed_hosts: tuple[str, ...] = (), port: int | None = None) -> MlflowServer:
    """A started server; ``static_prefix`` (e.g. ``/mlflow``) serves it below a path, as
    behind a proxy; ``allowed_hosts`` adds Host headers it accepts (a proxy's domain)."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(workdir, port or free_port(), database_uri, s3,
                          password=secrets.token_urlsafe(18), static_prefix=static_prefix,
                          allowed_hosts=allowed_hosts)
    server.start()
    return server


@contextmanager
def running_mlflow(workdir: Path, database_uri: str, s3: MotoS3, *, static_prefix: str = "",
                   allowed_hosts: tuple[str, ...] = (),
                   port: int | None = None) -> Iterator[MlflowServer]:
    server = start_mlflow(workdir, database_uri, s3, static_prefix=static_prefix,
                          allowed_hosts=allowed_hosts, port=port)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One authenticated MLflow server for the session (PostgreSQL, moto S3 artifacts)."""
    from tests.conftest import _postgres_database

    with contextmanager(_postgres_database)() as database_uri, moto_s3() as s3, \
            running_mlflow(tmp_path_factory.mktemp("mlflow"), database_uri, s3) as server:
        yield server
