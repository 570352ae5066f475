"""The team server: the medops HTTP API (and dashboard) over a project's shared state.

`medops server` runs :func:`medops.server.app.create_app` under uvicorn. Who may do what is
:mod:`medops.server.auth`; the routes are in :mod:`medops.server.api`. The server reads the
project's stores and acts through the functions the CLI calls (approve, reject, roll back),
never through the agent's or the pipeline's internals.
"""

from medops.server.auth import Authenticator, Principal, Role
from medops.server.settings import ServerSettings

__all__ = ["Authenticator", "Principal", "Role", "ServerSettings"]
