"""The ``server:`` part of medops.yaml: the team server this project's commands talk to.

    server:
      url: https://medops.example.org   # unset: every command acts on the local state
      token_env: MEDOPS_TOKEN           # the variable holding a token for the server
      ca_file: null                     # a CA bundle for a server with a private certificate
      mlflow_ui: https://medops.example.org/mlflow/   # links from the dashboard

With ``url`` set, `medops models approve/reject/rollback` are requests to the server, which
records the authenticated caller as the actor. The token is never written here: it comes from
the variable ``token_env`` or, if that is unset, from the credentials file
``~/.config/medops/credentials`` that `medops server login` writes (docs/server.md).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, field_validator

from medops.config.uris import check_http_url

_ENV_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


class ServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = None
    token_env: str = "MEDOPS_TOKEN"
    ca_file: str | None = None
    mlflow_ui: str | None = None

    @field_validator("url", "mlflow_ui")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_http_url(value, "https://medops.example.org")
        if urlsplit(value).username or urlsplit(value).password:
            raise ValueError("the URL carries a user name or password; credentials never go "
                             "in medops.yaml: put a token in the variable server.token_env "
                             "names, or run `medops server login`")
        return value.rstrip("/")

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not re.fullmatch(_ENV_NAME, value):
            raise ValueError(f"{value!r} is not an environment variable name (the token itself "
                             "never goes in medops.yaml); e.g. MEDOPS_TOKEN")
        return value
