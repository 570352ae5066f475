"""How one `medops server` process runs: address, workers, sessions, cookies, links."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from medops.config import MedopsConfig
from medops.server.auth import SESSION_HOURS

#: The variable that, on the first start with no user at all, makes the user ``admin``.
ADMIN_PASSWORD_ENV = "MEDOPS_ADMIN_PASSWORD"


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    #: requests handled at once per worker process (their database and registry calls run in
    #: threads); more threads than this only fight over the GIL and stretch the slowest answers
    threads: int = 8
    session_hours: float = SESSION_HOURS
    #: the session cookie's Secure flag: None sets it when the request came over TLS (directly,
    #: or ``X-Forwarded-Proto: https`` from a proxy in ``forwarded_allow_ips``)
    secure_cookies: bool | None = None
    #: proxies whose X-Forwarded-* headers are believed (uvicorn's ``forwarded_allow_ips``)
    forwarded_allow_ips: str = "127.0.0.1"
    #: the MLflow UI as people reach it, for links from the dashboard; None: none shown
    mlflow_ui: str | None = None
    #: the URL prefix the server is mounted under behind a proxy ("" at the root)
    root_path: str = ""

    @classmethod
    def from_config(cls, config: MedopsConfig, **overrides: Any) -> ServerSettings:
        """Defaults from medops.yaml: the MLflow UI is ``server.mlflow_ui``, else the tracking
        URI when it is an MLflow server."""
        tracking = config.storage.tracking
        mlflow_ui = config.server.mlflow_ui or (
            tracking.rstrip("/") if tracking.startswith(("http://", "https://")) else None)
        settings = cls(mlflow_ui=mlflow_ui)
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
