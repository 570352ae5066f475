"""`medops server init DIR`: a deployable team stack, written from the templates beside this file.

What it writes under ``DIR``::

    compose.yaml              PostgreSQL, MinIO (+ bucket job), MLflow (basic auth), the MLflow
                              user job, medops server, agent, serving, nginx
    .env                      settings and every generated secret (0600)      envfile.py
    secrets/                  private keys (0700): the TLS key and the CA's    tls.py
    tls/                      server.crt and ca.crt (public)
    nginx/nginx.conf          TLS, one origin: / and /api/ medops, /mlflow/ MLflow, /serve/
    mlflow/auth.ini, users.py MLflow's basic-auth settings; the one-shot user job
    minio/mlflow-policy.json  MLflow's MinIO key may use its bucket, nothing else
    postgres/init-databases.sh  one role and database per service
    project/medops.yaml       the project the medops services share (only when missing)
    README.md                 what runs, first login, rotating secrets, backups

Running it again never replaces a secret, the certificate (unless it no longer fits the
domain), or the project; rendered files that exist are kept unless ``force``. The options
also render a configuration for plain processes on loopback (tests, a first look without
docker): other upstream addresses and ports, and ``nginx_runtime`` for nginx's own files.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from medops.errors import ConfigError
from medops.server.stack.envfile import (
    ENV_FILE,
    SECRET_NAMES,
    SECRETS,
    merge_secrets,
    read_env,
    write_env,
)
from medops.server.stack.render import TEMPLATES, render, write_project
from medops.server.stack.tls import TlsFiles, ensure_tls

__all__ = ["SECRETS", "StackOptions", "StackReport", "Upstreams", "init_stack"]

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)"
                       r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+:\d{1,5}$|^\[[0-9a-fA-F:]+\]:\d{1,5}$")
DEFAULT_DOMAIN = "localhost"
#: images the stack runs; .env holds them, so an upgrade is an edit there
IMAGES = {
    "POSTGRES_IMAGE": "postgres:16-alpine",
    "MINIO_IMAGE": "minio/minio:RELEASE.2025-04-22T22-12-26Z",
    "MINIO_CLIENT_IMAGE": "minio/mc:RELEASE.2025-04-16T18-13-26Z",
    "NGINX_IMAGE": "nginx:1.27-alpine",
}


@dataclass(frozen=True)
class Upstreams:
    """Where nginx sends each part of the origin (``host:port``): compose's service names by
    default, loopback addresses for plain processes."""

    medops: str = "medops-server:8000"
    mlflow: str = "mlflow:5000"
    serve: str = "serve:8080"

    def __post_init__(self) -> None:
        for name in ("medops", "mlflow", "serve"):
            value = getattr(self, name)
            if not _HOSTPORT.match(value):
                raise ConfigError(f"upstream {name}={value!r} is not host:port; write e.g. "
                                  "127.0.0.1:8000 or medops-server:8000")


@dataclass(frozen=True)
class StackOptions:
    """What ``server init`` varies. ``domain`` None keeps the one the stack was made for
    (else ``localhost``); ``cert``/``key`` bring your own certificate."""

    domain: str | None = None
    force: bool = False
    cert: Path | None = None
    key: Path | None = None
    https_port: int | None = None  # None: the stack's, else 443
    http_port: int | None = None  # None: the stack's, else 80
    upstreams: Upstreams = field(default_factory=Upstreams)
    #: plain-process nginx: pid, logs and temp files under this folder, listening on
    #: 127.0.0.1 at the ports above; None: the container layout (nginx.conf in the image's paths)
    nginx_runtime: Path | None = None
    #: the medops project name in project/medops.yaml, when that file is written
    project: str = "medops"

    def __post_init__(self) -> None:
        if self.domain is not None:
            check_domain(self.domain)
        for name in ("https_port", "http_port"):
            port = getattr(self, name)
            if port is not None and not 1 <= port <= 65535:
                raise ConfigError(f"--{name.replace('_', '-')} {port} is not a port (1-65535)")


@dataclass(frozen=True)
class StackReport:
    root: Path
    url: str  # https://DOMAIN[:PORT], what people open
    written: tuple[Path, ...]  # files written now
    kept: tuple[Path, ...]  # files that existed and were left as they were
    secrets_generated: tuple[str, ...]  # names only, never values
    secrets_kept: tuple[str, ...]
    tls: TlsFiles


def check_domain(domain: str) -> str:
    try:
        ipaddress.ip_address(domain)
        return domain
    except ValueError:
        pass
    if not _HOSTNAME.match(domain):
        raise ConfigError(f"--domain {domain!r} is not a host name (lowercase letters, digits, "
                          "'-' and '.', e.g. medops.example.org) nor an IP address")
    return domain


def init_stack(dest: Path, options: StackOptions | None = None) -> StackReport:
    """Write (or complete) the team stack in ``dest``; see the module docstring."""
    options = options or StackOptions()
    root = dest.resolve()
    if root.exists() and not root.is_dir():
        raise ConfigError(f"{dest} is a file; give a folder for the stack")
    env_path = root / ENV_FILE
    existing = read_env(env_path)
    if (root.is_dir() and any(root.iterdir()) and not existing
            and not (root / "compose.yaml").exists() and not options.force):
        raise ConfigError(f"{dest} is not empty and holds no medops stack; pick an empty or "
                          "new folder, or pass --force to write the stack into it")
    domain = options.domain or existing.get("MEDOPS_DOMAIN") or DEFAULT_DOMAIN
    check_domain(domain)
    old_domain = existing.get("MEDOPS_DOMAIN")
    if old_domain and old_domain != domain and not options.force:
        raise ConfigError(f"{dest} was made for {old_domain}; pass --force to render it again "
                          f"for {domain} (secrets are kept, the certificate is re-issued)")
    ports = _Ports(options.https_port or _port(existing, "MEDOPS_HTTPS_PORT", 443),
                   options.http_port or _port(existing, "MEDOPS_HTTP_PORT", 80))
    if ports.https == ports.http:
        raise ConfigError(f"--https-port and --http-port are both {ports.https}; nginx needs "
                          "one port for each")
    root.mkdir(parents=True, exist_ok=True)

    secrets_result = merge_secrets(existing)
    settings = _settings(domain, ports, existing)
    extra = {k: v for k, v in existing.items() if k not in SECRET_NAMES and k not in settings}
    write_env(env_path, settings, secrets_result.values, extra)
    written: list[Path] = [env_path]
    kept: list[Path] = []

    tls = ensure_tls(root, domain, options.cert, options.key)
    written += tls.written
    kept += tls.kept
    context = _context(options, domain, ports, tls.files)
    for name, (template, mode) in TEMPLATES.items():
        path = root / name
        if path.exists() and not options.force:
            kept.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(template, context))
        if mode is not None:
            path.chmod(mode)
        written.append(path)
    project_file = write_project(root / "project", options.project, domain, ports.https)
    (written if project_file.created else kept).append(project_file.path)
    if options.nginx_runtime is not None:
        options.nginx_runtime.mkdir(parents=True, exist_ok=True)
    public = "" if ports.https == 443 else f":{ports.https}"
    return StackReport(root, f"https://{domain}{public}", tuple(written), tuple(kept),
                       secrets_result.generated, secrets_result.kept, tls.files)


def _port(existing: dict[str, str], key: str, default: int) -> int:
    value = existing.get(key) or str(default)
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ConfigError(f"{key}={value!r} in .env is not a port (1-65535); fix the line")
    return int(value)


@dataclass(frozen=True)
class _Ports:
    https: int
    http: int


def _settings(domain: str, ports: _Ports, existing: dict[str, str]) -> dict[str, str]:
    def pick(key: str, default: str) -> str:
        return existing.get(key) or default

    return {
        "COMPOSE_PROJECT_NAME": pick("COMPOSE_PROJECT_NAME", "medops"),
        "MEDOPS_DOMAIN": domain,
        "MEDOPS_HTTP_PORT": str(ports.http),
        "MEDOPS_HTTPS_PORT": str(ports.https),
        # the owner of project/, whom the medops containers run as
        "MEDOPS_UID": pick("MEDOPS_UID", str(os.getuid())),
        "MEDOPS_GID": pick("MEDOPS_GID", str(os.getgid())),
        # built from this checkout's docker/ folder (README.md)
        "MEDOPS_SERVER_IMAGE": pick("MEDOPS_SERVER_IMAGE", "medops-server"),
        "MEDOPS_TRAIN_IMAGE": pick("MEDOPS_TRAIN_IMAGE", "medops-train"),
        "MEDOPS_SERVE_IMAGE": pick("MEDOPS_SERVE_IMAGE", "medops-serve"),
        **{k: pick(k, v) for k, v in IMAGES.items()},
    }


def _context(options: StackOptions, domain: str, ports: _Ports,
             tls: TlsFiles) -> dict[str, object]:
    runtime = options.nginx_runtime
    public = "" if ports.https == 443 else f":{ports.https}"
    if runtime is None:  # inside the nginx container, behind compose's port mapping
        listen_https, listen_http = "443", "80"
        tls_paths = {"cert": "/etc/nginx/tls/server.crt", "key": "/etc/nginx/tls/server.key"}
    else:
        listen_https, listen_http = f"127.0.0.1:{ports.https}", f"127.0.0.1:{ports.http}"
        tls_paths = {"cert": str(tls.cert), "key": str(tls.key)}
    hosts = [domain, f"{domain}:{ports.https}", "mlflow", "mlflow:5000",
             "localhost", "localhost:5000"]
    return {
        "domain": domain,
        "runtime": str(runtime.resolve()) if runtime is not None else None,
        "listen_https": listen_https,
        "listen_http": listen_http,
        "https_suffix": public,
        "origin": f"https://{domain}{public}",
        "allowed_hosts": ",".join(dict.fromkeys(hosts)),
        "upstreams": options.upstreams,
        "tls": tls_paths,
        "bucket": "mlflow",
        # nginx's body limits: artifacts (checkpoints, packaged models) are large; the serving
        # limit matches serve.max_body_mb's default
        "limits": {"mlflow": "2g", "api": "16m", "serve": "32m"},
    }
