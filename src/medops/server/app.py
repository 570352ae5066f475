"""The `medops server` application: the API under ``/api`` and, when installed, the dashboard.

Errors are the JSON body of :mod:`medops.serve.http_errors` (one error-to-status table for
every medops HTTP service): a 401 or 403 says what is missing, a bad value is a 4xx naming it,
and nothing a client sends yields a 500.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from medops.project import Project
from medops.server.api import build_api
from medops.server.auth import Authenticator
from medops.server.dashboard import build as build_dashboard
from medops.server.dashboard.web import LoginRequiredError, login_redirect
from medops.server.settings import ADMIN_PASSWORD_ENV, ServerSettings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Headers on every answer: no sniffing, no framing by other sites, no caching of API data.
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
)
API_NO_STORE = (b"cache-control", b"no-store")


def create_app(project: Project, settings: ServerSettings) -> FastAPI:
    """The API (and dashboard) over ``project``'s state, with users, roles and tokens."""
    from medops import __version__

    state = project.state  # opened here, once, before request threads race for it
    authenticator = Authenticator(state.db, session_hours=settings.session_hours,
                                  audit=state.audit)
    first = authenticator.ensure_first_admin(os.environ.get(ADMIN_PASSWORD_ENV))
    if first is not None:
        log.warning("no user existed: created the admin user %r from %s", first.name,
                    ADMIN_PASSWORD_ENV)
    elif not authenticator.users():
        log.warning("no user exists yet: create one on this host with `medops server users add "
                    "NAME --role admin`, or start once with %s set", ADMIN_PASSWORD_ENV)

    # the serving package loads PyTorch: after the checks above, so a bad setting fails fast
    from medops.serve.http_errors import install_handlers

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        yield

    app = FastAPI(title="medops server", version=__version__, lifespan=lifespan,
                  description="Runs, events, items, model versions and their sign-off, "
                              "monitor results and the audit log of a medops project.",
                  openapi_url="/api/openapi.json", docs_url="/api/docs", redoc_url=None,
                  swagger_ui_oauth2_redirect_url="/api/docs/oauth2-redirect",
                  root_path=settings.root_path)
    app.state.project = project
    app.state.settings = settings
    app.state.authenticator = authenticator
    install_handlers(app)
    app.include_router(build_api(project, settings), prefix="/api")
    app.include_router(build_dashboard(project, settings))
    app.add_exception_handler(LoginRequiredError, login_redirect)
    app.add_middleware(_SecurityHeaders)
    return app


class _SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` (and no-store under /api) to every answer; plain ASGI,
    so it costs next to nothing per request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = [*SECURITY_HEADERS]
        if str(scope.get("path", "")).startswith("/api/"):
            extra.append(API_NO_STORE)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *(h for h in extra if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# -- running it -----------------------------------------------------------------------------
#: How a worker process of `medops server --workers N` finds its project and settings: uvicorn
#: starts workers by importing :func:`app_from_environment`, so they come through the
#: environment (paths and numbers only, never a credential).
PROJECT_ENV = "MEDOPS_SERVER_PROJECT"
SETTINGS_ENV = "MEDOPS_SERVER_SETTINGS"


def app_from_environment() -> FastAPI:
    """The app of one worker process (uvicorn's ``factory``)."""
    import json
    from pathlib import Path

    settings = ServerSettings(**json.loads(os.environ[SETTINGS_ENV]))
    return create_app(Project.load(Path(os.environ[PROJECT_ENV])), settings)


def run_server(project: Project, settings: ServerSettings, log_level: str = "info") -> None:
    """Serve until SIGTERM or SIGINT (blocking): one process, or ``settings.workers``."""
    import dataclasses
    import json

    import uvicorn

    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The app is made here even for several workers: the first admin is made once, and a bad
    # setting is reported once, before any worker starts.
    app = create_app(project, settings)
    from medops.serve.server import GRACEFUL_SECONDS, check_bindable

    check_bindable(settings.host, settings.port)
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_level": log_level,
        "access_log": False, "proxy_headers": True,
        "forwarded_allow_ips": settings.forwarded_allow_ips,
        "timeout_graceful_shutdown": GRACEFUL_SECONDS, "lifespan": "on"}
    if settings.workers <= 1:
        uvicorn.Server(uvicorn.Config(app, **common)).run()
        return
    os.environ[PROJECT_ENV] = str(project.root)
    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    uvicorn.run("medops.server.app:app_from_environment", factory=True,
                workers=settings.workers, **common)
