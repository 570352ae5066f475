"""The CLI's side of the team server: sign-off as requests to `medops server`.

When medops.yaml sets ``server.url``, `medops models approve/reject/rollback` call the server
with a token, and the server records the token's holder as the actor. The token comes from
the environment variable ``server.token_env`` (``MEDOPS_TOKEN``), else from the credentials
file :func:`credentials_path` that `medops server login` writes::

    [https://medops.example.org]
    token = mds_...

It must be readable by its owner only (like ``~/.ssh`` keys); a file others can read is
refused. medops.yaml never holds a credential.
"""

from __future__ import annotations

import configparser
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medops.config.server import ServerConfig
from medops.errors import (
    AuthenticationError,
    ConfigError,
    MedopsError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    RequestError,
    SignOffError,
    UnavailableError,
)

#: Status -> the error the CLI raises (and so its exit code); anything else 5xx: unavailable.
_ERRORS: dict[int, type[MedopsError]] = {
    400: RequestError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
    409: SignOffError, 413: RequestError, 415: RequestError, 422: RequestError,
    502: RegistryError,
}


def credentials_path() -> Path:
    """``$XDG_CONFIG_HOME/medops/credentials`` (default ``~/.config/medops/credentials``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "medops" / "credentials"


def _read_credentials(path: Path) -> configparser.ConfigParser:
    found = configparser.ConfigParser(interpolation=None)
    if not path.is_file():
        return found
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} can be read by other users (mode {stat.filemode(mode)}); "
                          f"it holds server tokens: chmod 600 {path}")
    try:
        found.read(path)
    except configparser.Error as exc:
        raise ConfigError(f"{path} is not a credentials file medops can read: {exc}; delete "
                          "it and run `medops server login` again") from None
    return found


def stored_token(url: str, path: Path | None = None) -> str | None:
    creds = _read_credentials(path or credentials_path())
    key = url.rstrip("/")
    return creds.get(key, "token", fallback=None) if creds.has_section(key) else None


def store_token(url: str, token: str, path: Path | None = None) -> Path:
    """Keep ``token`` for ``url`` in the credentials file (created owner-only)."""
    path = path or credentials_path()
    creds = _read_credentials(path)
    key = url.rstrip("/")
    if not creds.has_section(key):
        creds.add_section(key)
    creds.set(key, "token", token)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        creds.write(f)
    tmp.replace(path)
    return path


def forget_token(url: str, path: Path | None = None) -> bool:
    path = path or credentials_path()
    creds = _read_credentials(path)
    if not creds.remove_section(url.rstrip("/")):
        return False
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "w") as f:
        creds.write(f)
    return True


@dataclass
class ServerClient:
    """Requests to one `medops server`, with a bearer token."""

    url: str
    token: str | None
    ca_file: str | None = None
    timeout: float = 30.0
    #: where the token came from, for error messages (never the token itself)
    token_source: str = "no token"

    @classmethod
    def from_config(cls, config: ServerConfig, root: Path) -> ServerClient:
        if config.url is None:
            raise ConfigError("server.url is not set in medops.yaml; commands act locally")
        ca_file = None
        if config.ca_file:
            ca = Path(config.ca_file).expanduser()
            ca_file = str(ca if ca.is_absolute() else root / ca)
        token = os.environ.get(config.token_env) or None
        source = f"${config.token_env}"
        if token is None:
            token = stored_token(config.url)
            source = str(credentials_path())
        return cls(config.url, token, ca_file, token_source=source if token else "no token")

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                *, authenticated: bool = True) -> Any:
        import httpx

        headers = {"Accept": "application/json"}
        if authenticated:
            if not self.token:
                raise AuthenticationError(
                    f"no token for the medops server {self.url}: set the variable the "
                    "server.token_env of medops.yaml names (default MEDOPS_TOKEN), or run "
                    "`medops server login`")
            headers["Authorization"] = f"Bearer {self.token}"
        verify: str | bool = self.ca_file or True
        try:
            with httpx.Client(base_url=self.url, timeout=self.timeout, verify=verify) as c:
                answer = c.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise UnavailableError(f"cannot reach the medops server at {self.url}: "
                                   f"{type(exc).__name__}: {exc}; check server.url in "
                                   "medops.yaml and that the server is running") from None
        if answer.status_code < 400:
            return answer.json()
        message = _message(answer)
        if answer.status_code == 401:
            message += f" (token from {self.token_source})"
        error = _ERRORS.get(answer.status_code, UnavailableError)
        raise error(f"the medops server at {self.url} answered {answer.status_code}: {message}")

    # -- sign-off -------------------------------------------------------------------------
    def approve(self, name: str, version: str, note: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/api/models/{_seg(name)}/versions/{_seg(version)}"
                                         "/approve", {"note": note}))

    def reject(self, name: str, version: str, note: str) -> dict[str, Any]:
        return dict(self.request("POST", f"/api/models/{_seg(name)}/versions/{_seg(version)}"
                                         "/reject", {"note": note}))

    def rollback(self, name: str, note: str, to: str | None = None) -> dict[str, Any]:
        return dict(self.request("POST", f"/api/models/{_seg(name)}/rollback",
                                 {"note": note, "to": to}))

    def login(self, user: str, password: str) -> dict[str, Any]:
        return dict(self.request("POST", "/api/login", {"user": user, "password": password},
                                 authenticated=False))

    def me(self) -> dict[str, Any]:
        return dict(self.request("GET", "/api/me"))


def _seg(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def _message(answer: Any) -> str:
    try:
        return str(answer.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return answer.text[:300] or answer.reason_phrase
