"""`medops server init`: the stack's files, and its nginx in front of real services.

Docker cannot run here, so what the stack runs is started as plain processes: the nginx
configuration that `init_stack` renders (for loopback upstreams) in Debian's nginx, in front of
a real `mlflow server --app-name basic-auth` on PostgreSQL with artifacts proxied to moto's S3,
and a real `medops server`. The compose file itself is checked by reading it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from medops.errors import ConfigError
from medops.server.stack import SECRETS, StackOptions, StackReport, Upstreams, init_stack
from medops.server.stack.envfile import read_env
from tests.servers.mlflow import MlflowServer, MotoS3, free_port, moto_s3, running_mlflow
from tests.servers.nginx import NginxProcess, running_nginx
from tests.servers.processes import stop_group

DOMAIN = "127.0.0.1"
SERVICES = {"postgres", "minio", "minio-init", "mlflow", "mlflow-users", "medops-server",
            "agent", "serve", "nginx"}
#: the services that may hold object-store credentials (MinIO's or MLflow's key)
OBJECT_STORE_SIDE = {"minio", "minio-init", "mlflow"}
#: well-known default credentials, which must appear nowhere as a value
FORBIDDEN = ("password", "minioadmin", "changeme", "admin", "secret", "mlflow123", "12345678")


def compose(root: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((root / "compose.yaml").read_text()))


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def strings(node: object) -> Iterator[str]:
    """Every string in a parsed YAML document, keys included (comments are gone)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


# -- the files ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def default_stack(tmp_path_factory: pytest.TempPathFactory) -> StackReport:
    """The stack as a team deploys it: compose service names, ports 443 and 80."""
    return init_stack(tmp_path_factory.mktemp("default") / "stack",
                      StackOptions(domain="medops.example.org"))


def test_compose_runs_the_whole_stack_behind_nginx(default_stack: StackReport) -> None:
    spec = compose(default_stack.root)
    services = spec["services"]
    assert set(services) == SERVICES
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nginx"}
    assert spec["networks"]["data"]["internal"] is True
    for name in ("postgres", "minio", "minio-init"):
        assert services[name]["networks"] == ["data"], name

    mlflow = services["mlflow"]
    args = dict(a.split("=", 1) if "=" in a else (a, "") for a in mlflow["command"][2:])
    assert mlflow["command"][:2] == ["mlflow", "server"]
    assert args["--app-name"] == "basic-auth"
    assert args["--backend-store-uri"].startswith("postgresql+psycopg://mlflow@postgres:5432/")
    assert args["--artifacts-destination"] == "s3://mlflow/artifacts"
    assert "--serve-artifacts" in args
    assert args["--static-prefix"] == "/mlflow"
    hosts = args["--allowed-hosts"].split(",")
    assert {"medops.example.org", "mlflow:5000"} <= set(hosts)
    assert args["--cors-allowed-origins"] == "https://medops.example.org"
    env = environment(mlflow)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/medops/mlflow-auth.ini"
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "${MLFLOW_FLASK_SERVER_SECRET_KEY:?}"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in mlflow["volumes"]}
    assert (default_stack.root / mounts["/etc/medops/mlflow-auth.ini"]).is_file()

    # the medops services use the images of docker/ and share the project folder
    assert services["agent"]["command"][:2] == ["medops", "agent"]
    assert services["serve"]["command"] == ["serve"]
    assert services["medops-server"]["command"][:2] == ["medops", "server"]
    for name in ("medops-server", "agent", "serve"):
        assert "./project:/project" in services[name]["volumes"], name
    nginx_conf = (default_stack.root / "nginx" / "nginx.conf").read_text()
    assert "server medops-server:8000;" in nginx_conf
    assert "server mlflow:5000;" in nginx_conf
    assert "listen 443 ssl" in nginx_conf
    assert "ssl_certificate /etc/nginx/tls/server.crt;" in nginx_conf


def test_every_secret_is_generated_and_none_has_a_default(default_stack: StackReport) -> None:
    root = default_stack.root
    env = read_env(root / ".env")
    references = re.findall(r"\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}", "\n".join(strings(compose(root))))
    assert references
    for name, modifier in references:
        if name == "COMPOSE_PROJECT_NAME":
            continue
        assert modifier == ":?", f"${{{name}{modifier}}}: a variable with a default"
        assert env.get(name), f"{name} is used by compose.yaml but not in .env"
    secret_values = [env[s.name] for s in SECRETS]
    assert len(set(secret_values)) == len(secret_values)
    for secret in SECRETS:
        assert len(env[secret.name]) >= 20, secret.name
        assert env[secret.name].isascii() and re.fullmatch(r"[A-Za-z0-9-]+", env[secret.name])
    assert len(env["MLFLOW_ADMIN_PASSWORD"]) >= 12 and len(env["MEDOPS_ADMIN_PASSWORD"]) >= 12
    # no literal credential anywhere a service reads one
    for name, service in compose(root)["services"].items():
        for key, value in environment(service).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "TOKEN", "ROOT_USER")):
                assert value.startswith("${") and value.endswith(":?}"), (name, key, value)
    assert not [v for v in strings(compose(root)) if v.lower() in FORBIDDEN]
    for path in (root / "mlflow" / "auth.ini", root / "project" / "medops.yaml"):
        content = path.read_text()
        assert not any(v in content for v in secret_values), path
        assert "admin_password" not in content.replace("# admin_password", "")
    settings = [line.split("#", 1)[0] for line in
                (root / "project" / "medops.yaml").read_text().lower().splitlines()]
    assert not [s for s in settings if "password" in s]  # the comments may say where they go
    # owner-only: the secrets file, the key folder and the keys
    assert stat.S_IMODE((root / ".env").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "secrets").stat().st_mode) == 0o700
    for key in ("server.key", "ca.key"):
        assert stat.S_IMODE((root / "secrets" / key).stat().st_mode) == 0o600


def test_object_store_keys_and_admin_passwords_stay_server_side(
        default_stack: StackReport) -> None:
    services = compose(default_stack.root)["services"]
    for name, service in services.items():
        env = environment(service)
        store_keys = {k for k in env if k.startswith(("AWS_", "MINIO_", "MLFLOW_S3_SECRET"))
                      and k != "MLFLOW_S3_ENDPOINT_URL"}
        if name not in OBJECT_STORE_SIDE:
            assert not store_keys, f"{name} gets object-store credentials {store_keys}"
        if name not in ("mlflow", "mlflow-users"):
            assert "MLFLOW_ADMIN_PASSWORD" not in env, name
        if name != "postgres":
            assert "POSTGRES_PASSWORD" not in env, name
    assert environment(services["mlflow"])["AWS_ACCESS_KEY_ID"] == "mlflow"  # not MinIO's root
    assert "MEDOPS_ADMIN_PASSWORD" in environment(services["medops-server"])
    for name in ("agent", "serve"):
        env = environment(services[name])
        assert env["MLFLOW_TRACKING_USERNAME"] == "medops", name
        assert "MEDOPS_ADMIN_PASSWORD" not in env, name


def test_buckets_are_private_and_mlflows_key_is_limited_to_its_bucket(
        default_stack: StackReport) -> None:
    job = " ".join(compose(default_stack.root)["services"]["minio-init"]["command"])
    assert "mc anonymous set none stack/mlflow" in job
    assert not re.search(r"anonymous set (public|download|upload)", job)
    assert "policy attach stack mlflow-artifacts --user mlflow" in job
    policy = json.loads((default_stack.root / "minio" / "mlflow-policy.json").read_text())
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::mlflow", "arn:aws:s3:::mlflow/*"}
    assert all(s["Effect"] == "Allow" and "Principal" not in s for s in policy["Statement"])
    assert not any(a in ("s3:*", "*") for s in policy["Statement"] for a in s["Action"])


def test_the_generated_project_points_at_the_stack(default_stack: StackReport) -> None:
    from medops.config import load_config

    config = load_config(default_stack.root / "project" / "medops.yaml")
    assert config.storage.state == "postgresql+psycopg://medops@postgres:5432/medops"
    assert config.storage.tracking == "http://mlflow:5000/mlflow"
    assert config.serve.token_env == "MEDOPS_SERVE_TOKEN" and config.serve.host == "0.0.0.0"
    assert config.server.mlflow_ui == "https://medops.example.org/mlflow"


def test_running_init_again_keeps_secrets_certificate_and_edits(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    first = init_stack(root, StackOptions(domain="medops.example.org"))
    env = read_env(root / ".env")
    cert = (root / "tls" / "server.crt").read_bytes()
    (root / "compose.yaml").write_text((root / "compose.yaml").read_text() + "# edited\n")
    with (root / ".env").open("a") as f:
        f.write("SMTP_RELAY=mail.example.org\n")

    again = init_stack(root)
    assert again.secrets_generated == () and set(again.secrets_kept) == {s.name for s in SECRETS}
    assert read_env(root / ".env") == env | {"SMTP_RELAY": "mail.example.org"}
    assert (root / "tls" / "server.crt").read_bytes() == cert
    assert (root / "compose.yaml").read_text().endswith("# edited\n")
    assert root / "compose.yaml" in again.kept and root / "compose.yaml" in first.written

    # a deleted secret is made anew, alone: how a rotation starts
    lines = (root / ".env").read_text().splitlines()
    (root / ".env").write_text("\n".join(x for x in lines if not x.startswith("MEDOPS_SERVE_TOKEN"))
                               + "\n")
    rotated = init_stack(root)
    assert rotated.secrets_generated == ("MEDOPS_SERVE_TOKEN",)
    new = read_env(root / ".env")
    assert new["MEDOPS_SERVE_TOKEN"] != env["MEDOPS_SERVE_TOKEN"]
    assert {k: v for k, v in new.items() if k != "MEDOPS_SERVE_TOKEN"} == \
        {k: v for k, v in env.items() if k != "MEDOPS_SERVE_TOKEN"} | {"SMTP_RELAY":
                                                                          "mail.example.org"}

    with pytest.raises(ConfigError, match=r"was made for medops\.example\.org"):
        init_stack(root, StackOptions(domain="other.example.org"))
    forced = init_stack(root, StackOptions(domain="other.example.org", force=True))
    assert forced.secrets_generated == ()
    assert "other.example.org" in (root / "compose.yaml").read_text()
    assert (root / "tls" / "server.crt").read_bytes() != cert  # re-issued for the new name
    assert (root / "tls" / "ca.crt").exists()


def test_init_refuses_a_folder_that_is_not_a_stack(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no medops stack"):
        init_stack(tmp_path)
    with pytest.raises(ConfigError, match="not a host name"):
        StackOptions(domain="Medops Example")
    with pytest.raises(ConfigError, match="is not the private key of --cert"):
        own = init_stack(tmp_path / "a", StackOptions(domain="a.example.org"))
        other = init_stack(tmp_path / "b", StackOptions(domain="b.example.org"))
        init_stack(tmp_path / "c", StackOptions(domain="c.example.org", cert=own.tls.cert,
                                                key=other.tls.key))


def test_server_init_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medops.cli.main import app

    result = CliRunner().invoke(app, ["server", "init", str(tmp_path / "s"), "--domain",
                                      "medops.example.org", "--https-port", "8443", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["url"] == "https://medops.example.org:8443"
    assert len(out["secrets_generated"]) == len(SECRETS)
    values = read_env(tmp_path / "s" / ".env")
    assert not any(values[s.name] in result.output for s in SECRETS)  # names, never values


@pytest.mark.postgres
def test_postgres_init_script_makes_one_role_and_database_per_service(tmp_path: Path) -> None:
    base = os.environ.get("MEDOPS_TEST_POSTGRES_URI")
    if not base or shutil.which("psql") is None:
        pytest.skip("needs MEDOPS_TEST_POSTGRES_URI and psql")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    stack = init_stack(tmp_path / "stack")
    url = make_url(base)
    suffix = uuid.uuid4().hex[:8]
    names = {"MEDOPS_DB": f"medops_{suffix}", "MLFLOW_DB": f"mlflow_{suffix}"}
    env = {**os.environ, **names, "MEDOPS_DB_PASSWORD": "x" * 32, "MLFLOW_DB_PASSWORD": "y" * 32,
           "POSTGRES_USER": url.username or "postgres", "PGHOST": url.host or "127.0.0.1",
           "PGPORT": str(url.port or 5432)}
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        done = subprocess.run(["sh", str(stack.root / "postgres" / "init-databases.sh")],
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        with admin.connect() as conn:
            owners: dict[str, str] = dict(conn.execute(text(
                "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r "
                "ON r.oid = d.datdba WHERE d.datname = ANY(:names)"),
                {"names": list(names.values())}).all())
            assert owners == {n: n for n in names.values()}
            public = conn.execute(text(
                "SELECT has_database_privilege('public', :db, 'CONNECT')"),
                {"db": names["MEDOPS_DB"]}).scalar()
            assert public is False
    finally:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()


# -- nginx in front of MLflow and the medops server -----------------------------------------
@dataclass
class LiveStack:
    report: StackReport
    mlflow: MlflowServer
    s3: MotoS3
    nginx: NginxProcess
    https: str  # https://127.0.0.1:PORT
    http: str
    admin_password: str  # medops's
    runtime: Path  # nginx's pid, logs and temp files

    @property
    def ca(self) -> str:
        assert self.report.tls.ca is not None
        return str(self.report.tls.ca)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.https, verify=ssl.create_default_context(
            cafile=self.ca), timeout=30, **kwargs)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    """The rendered nginx on free loopback ports, MLflow (PostgreSQL, moto S3) under /mlflow,
    `medops server` (its own project) for / and /api/ (and, prefix stripped, /serve/)."""
    from tests.conftest import _postgres_database

    base = tmp_path_factory.mktemp("live")
    medops_port, mlflow_port = free_port(), free_port()
    https_port, http_port = free_port(), free_port()
    report = init_stack(base / "stack", StackOptions(
        domain=DOMAIN, https_port=https_port, http_port=http_port,
        upstreams=Upstreams(medops=f"127.0.0.1:{medops_port}",
                            mlflow=f"127.0.0.1:{mlflow_port}",
                            serve=f"127.0.0.1:{medops_port}"),
        nginx_runtime=base / "nginx"))
    server = _start_medops_server(base / "project", medops_port)  # starts while MLflow does
    try:
        with contextmanager(_postgres_database)() as database_uri, moto_s3() as s3, \
                running_mlflow(base / "mlflow", database_uri, s3, static_prefix="/mlflow",
                               allowed_hosts=(DOMAIN,), port=mlflow_port) as mlflow:
            _wait_http(f"http://127.0.0.1:{medops_port}/api/health", server.process)
            with running_nginx(report.root / "nginx" / "nginx.conf",
                               (https_port, http_port)) as nginx:
                yield LiveStack(report, mlflow, s3, nginx, f"https://{DOMAIN}:{https_port}",
                                f"http://{DOMAIN}:{http_port}", server.password,
                                base / "nginx")
    finally:
        server.stop()


@dataclass
class _MedopsServer:
    process: subprocess.Popen[bytes]
    password: str
    log: Path

    def stop(self) -> None:
        stop_group(self.process, timeout=30)


def _start_medops_server(root: Path, port: int) -> _MedopsServer:
    from medops.project import Project

    Project.init(root, name="stack-test")
    password = uuid.uuid4().hex
    log = root / "server.log"
    env = {**os.environ, "MEDOPS_ADMIN_PASSWORD": password}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "medops.cli", "server", "-C", str(root), "--host",
             "127.0.0.1", "--port", str(port)], env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    return _MedopsServer(process, password, log)


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"{url}: the process exited ({process.returncode})"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def test_tls_with_the_stacks_certificate_and_a_redirect_from_http(live: LiveStack) -> None:
    with live.client() as c:
        r = c.get("/api/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert r.http_version in ("HTTP/1.1", "HTTP/2")
    assert r.headers["strict-transport-security"].startswith("max-age=")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'self'" in r.headers["content-security-policy"]
    assert r.headers.get_list("x-frame-options") == ["SAMEORIGIN"]  # nginx's only
    assert "server" not in r.headers or "nginx/" not in r.headers["server"]
    # a client that does not trust the stack's CA refuses the connection
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), \
            httpx.Client(verify=ssl.create_default_context()) as plain:
        plain.get(f"{live.https}/api/health")
    r = httpx.get(f"{live.http}/api/runs?limit=1", follow_redirects=False)
    assert r.status_code == 301
    assert r.headers["location"] == f"{live.https}/api/runs?limit=1"


def test_medops_login_through_nginx_sets_a_secure_cookie(live: LiveStack) -> None:
    with live.client() as c:
        assert c.get("/api/me").status_code == 401
        r = c.post("/api/login", json={"user": "admin", "password": live.admin_password})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        assert "medops_session=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
        me = c.get("/api/me", headers={"authorization": f"Bearer {r.json()['token']}"})
        assert me.status_code == 200 and me.json()["name"] == "admin"
        # /serve/ strips its prefix (here it leads to the same server)
        assert c.get("/serve/api/health").json() == {"status": "ok"}
        assert c.get("/api/health?access_token=q-s-secret").status_code == 200
    access = (live.runtime / "access.log").read_text()  # paths and statuses, nothing else
    assert '"POST /api/login" 200' in access and '"GET /api/health" 200' in access
    assert live.admin_password not in access and "q-s-secret" not in access


def test_mlflow_through_nginx_needs_credentials(live: LiveStack) -> None:
    search = "/mlflow/api/2.0/mlflow/experiments/search?max_results=1"
    with live.client() as c:
        assert c.get(search).status_code == 401
        assert c.get(search, auth=("admin", "not-" + live.mlflow.password)).status_code == 401
        r = c.get(search, auth=live.mlflow.auth)
        assert r.status_code == 200, r.text
        assert c.get("/mlflow/health").status_code == 200
        assert c.get("/mlflow", follow_redirects=False).headers["location"].endswith("/mlflow/")


def test_the_mlflow_user_job_and_a_large_artifact_through_nginx(
        live: LiveStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-shot job makes the `medops` user (and, run again, resets its password); that
    user uploads 5 MiB, over nginx's 1 MiB default, which lands in the bucket."""
    medops_password = uuid.uuid4().hex
    job_env = {**os.environ, "MLFLOW_URL": f"{live.https}/mlflow",
               "MLFLOW_ADMIN_PASSWORD": live.mlflow.password,
               "MLFLOW_MEDOPS_PASSWORD": medops_password, "SSL_CERT_FILE": live.ca}
    users = str(live.report.root / "mlflow" / "users.py")
    for expected in ("created the MLflow user medops", "set the password of the MLflow user"):
        done = subprocess.run([sys.executable, users], env=job_env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout and medops_password not in done.stdout + done.stderr
    bad = subprocess.run([sys.executable, users], capture_output=True, text=True, timeout=60,
                         env={**job_env, "MLFLOW_ADMIN_PASSWORD": "wrong-password-1234"})
    assert bad.returncode == 1 and "HTTP 401" in bad.stderr

    import mlflow

    for key, value in {"MLFLOW_TRACKING_USERNAME": "medops",
                       "MLFLOW_TRACKING_PASSWORD": medops_password,
                       "MLFLOW_TRACKING_SERVER_CERT_PATH": live.ca}.items():
        monkeypatch.setenv(key, value)
    client = mlflow.MlflowClient(tracking_uri=f"{live.https}/mlflow")
    experiment = client.create_experiment(f"stack-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    blob = tmp_path / "weights.bin"
    blob.write_bytes(os.urandom(5 * 2**20))
    client.log_artifact(run.info.run_id, str(blob))
    client.set_terminated(run.info.run_id)

    keys = live.s3.keys("mlflow/")
    assert any(k.endswith(f"{run.info.run_id}/artifacts/weights.bin") for k in keys), keys
    back = Path(client.download_artifacts(run.info.run_id, "weights.bin", str(tmp_path / "d")))
    assert back.read_bytes() == blob.read_bytes()
