"""The stack's ``.env``: its settings and the secrets generated on the first ``server init``.

docker compose reads ``.env`` beside ``compose.yaml`` to fill every ``${VARIABLE}``. The file
is created owner-only (0600) and rewritten atomically; a secret already in it is never
replaced, so running ``server init`` again (or after an upgrade that adds a secret) keeps every
password that services already use and generates only the missing ones. Lines a person added
are kept.
"""

from __future__ import annotations

import os
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from medops.errors import ConfigError

ENV_FILE = ".env"
_ALPHABET = string.ascii_letters + string.digits
_LINE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


@dataclass(frozen=True)
class Secret:
    name: str
    purpose: str
    #: characters of a generated value, letters and digits only: no quoting in .env, YAML, a
    #: shell or a URL, and never a leading ``-`` that a command would read as an option
    length: int = 32
    prefix: str = ""  # a generated user name reads better with one

    def generate(self) -> str:
        body = "".join(secrets.choice(_ALPHABET) for _ in range(self.length - len(self.prefix)))
        return self.prefix + body


#: Every generated credential of the stack. None has a default anywhere: compose refuses to
#: start a service whose variable is missing (``${NAME:?}``).
SECRETS: tuple[Secret, ...] = (
    Secret("POSTGRES_PASSWORD", "PostgreSQL superuser `postgres` (backups, maintenance)"),
    Secret("MEDOPS_DB_PASSWORD", "PostgreSQL role `medops`, owner of the state database"),
    Secret("MLFLOW_DB_PASSWORD", "PostgreSQL role `mlflow`, owner of MLflow's database"),
    Secret("MINIO_ROOT_USER", "MinIO root user (the bucket job only)", 20, "root-"),
    Secret("MINIO_ROOT_PASSWORD", "MinIO root password (the bucket job only)"),
    Secret("MLFLOW_S3_SECRET_KEY", "MinIO secret key of MLflow's own access key `mlflow`"),
    Secret("MLFLOW_ADMIN_PASSWORD", "MLflow user `admin`, set on MLflow's first start"),
    Secret("MLFLOW_MEDOPS_PASSWORD", "MLflow user `medops`, used by the medops services"),
    Secret("MLFLOW_FLASK_SERVER_SECRET_KEY", "signs MLflow's session cookies and CSRF tokens",
           64),
    Secret("MEDOPS_ADMIN_PASSWORD", "medops user `admin`, made on the server's first start"),
    Secret("MEDOPS_SERVE_TOKEN", "bearer token of the serving API (/serve/)", 43),
)
SECRET_NAMES = frozenset(s.name for s in SECRETS)


def read_env(path: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of ``path`` (comments and blank lines skipped); {} if absent."""
    if not path.exists():
        return {}
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = _LINE.match(text)
        if match is None:
            raise ConfigError(f"{path}:{number} is not a KEY=value line; fix or remove it "
                              "(docker compose would misread it too)")
        value = match["value"].strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[match["key"]] = value
    return values


@dataclass(frozen=True)
class EnvResult:
    values: dict[str, str]
    generated: tuple[str, ...]  # secret names made now
    kept: tuple[str, ...]  # secret names found in the existing file


def merge_secrets(existing: dict[str, str]) -> EnvResult:
    """Every secret of :data:`SECRETS`: the existing value where there is one."""
    values, generated, kept = {}, [], []
    for secret in SECRETS:
        old = existing.get(secret.name, "")
        if old:
            values[secret.name] = old
            kept.append(secret.name)
        else:
            values[secret.name] = secret.generate()
            generated.append(secret.name)
    return EnvResult(values, tuple(generated), tuple(kept))


def write_env(path: Path, settings: dict[str, str], secret_values: dict[str, str],
              extra: dict[str, str]) -> None:
    """Write ``.env`` owner-only and atomically: settings, then secrets with their purpose,
    then ``extra`` (lines a person added before)."""
    purposes = {s.name: s.purpose for s in SECRETS}
    lines = ["# The medops stack's settings and secrets, written by `medops server init`.",
             "# Owner-only (0600); never commit it. Re-running `medops server init` keeps every",
             "# secret below; README.md says how to rotate one.", "", "# settings"]
    lines += [f"{k}={v}" for k, v in settings.items()]
    lines += ["", "# secrets (generated)"]
    for name, value in secret_values.items():
        lines += [f"# {purposes[name]}", f"{name}={value}"]
    if extra:
        lines += ["", "# kept from the previous file"]
        lines += [f"{k}={v}" for k, v in extra.items()]
    write_private(path, "\n".join(lines) + "\n")


def write_private(path: Path, text: str) -> None:
    """``text`` into ``path``, readable by its owner only from the first byte on."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o600)  # O_CREAT's mode is only used for a new file
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
