"""What every page shares: templates, who is looking, CSRF tokens, the way to the login page.

Pages are HTML rendered on the server with Jinja2 (autoescaped), behind the same login as the
API: the ``medops_session`` cookie or a bearer token, checked by :mod:`medops.server.auth`.
A browser without a session is sent to ``/login`` (303), not shown a JSON 401.

Forms are POSTs carrying a CSRF token: an HMAC of the caller's session token, so it is tied
to that session, needs no server-side storage (any worker checks it) and dies with the
session. The cookie is ``SameSite=Strict`` as well; the token is the defence that does not
depend on the browser. The login form, which has no session yet, uses a double-submit cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from medops.errors import PermissionDeniedError
from medops.project import Project
from medops.server.auth import Principal, Role, optional_principal, request_token
from medops.server.settings import ServerSettings
from medops.storage.monitoring import MonitorResults
from medops.storage.serving import ServingStats

if TYPE_CHECKING:
    from medops.registry import ModelLifecycle, ModelRegistry
    from medops.registry.browse import RunFiles

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
LOGIN_CSRF_COOKIE = "medops_login_csrf"
_CSRF_LABEL = b"medops-dashboard-csrf"
#: How long registry reads are reused: 50 dashboards polling must not each ask MLflow.
REGISTRY_TTL_SECONDS = 2.0

T = TypeVar("T")


def csrf_token(session_token: str) -> str:
    return hmac.new(session_token.encode(), _CSRF_LABEL, hashlib.sha256).hexdigest()


def csrf_ok(request: Request, sent: str | None) -> bool:
    token = request_token(request)
    if not token or not sent:
        return False
    return hmac.compare_digest(csrf_token(token), str(sent))


def new_login_csrf() -> str:
    return secrets.token_urlsafe(24)


def safe_next(target: str | None) -> str:
    """A local path to go to after logging in; anything else (another site) is ``/``."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") \
            or "\\" in target:
        return "/"
    return target


def root(request: Request) -> str:
    """The prefix the server is mounted under behind a proxy ("" at the root)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def redirect(request: Request, path: str) -> RedirectResponse:
    """A 303 to ``path`` of this server (under its root path)."""
    return RedirectResponse(root(request) + path, status_code=303)


def login_redirect(request: Request, _exc: Exception | None = None) -> RedirectResponse:
    """Back to this page after logging in (the handler of :class:`LoginRequiredError`)."""
    here = request.url.path[len(root(request)):] \
        + (f"?{request.url.query}" if request.url.query else "")
    return redirect(request, f"/login?next={quote(here, safe='')}")


class LoginRequiredError(Exception):
    """A page asked for without a valid session: the browser is sent to ``/login``."""


def page_viewer(request: Request) -> Principal:
    who = optional_principal(request)
    if who is None:
        raise LoginRequiredError
    return who


#: A page's logged-in caller (any role); without a session the page answers a 303 to /login.
Viewer = Annotated[Principal, Depends(page_viewer)]


class Dashboard:
    """The project, the templates and the readers every page uses."""

    def __init__(self, project: Project, settings: ServerSettings) -> None:
        self.project = project
        self.settings = settings
        self.env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                               autoescape=select_autoescape(["html"]), trim_blocks=True,
                               lstrip_blocks=True)
        self.env.filters["when"] = _when
        self.env.filters["ago"] = _ago
        self.env.filters["num"] = _num
        self.env.globals["svg"] = Markup  # charts are built (and escaped) in svg.py
        self._cache: dict[tuple[str, ...], tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def secure_cookies(self, request: Request) -> bool:
        """The Secure flag of cookies: as configured, else whether the request came over TLS
        (uvicorn believes X-Forwarded-Proto only from ``forwarded_allow_ips``)."""
        if self.settings.secure_cookies is not None:
            return self.settings.secure_cookies
        return request.url.scheme == "https"

    # -- who is looking -------------------------------------------------------------------
    def principal(self, request: Request) -> Principal | None:
        return optional_principal(request)

    def check_form(self, request: Request, who: Principal, csrf: str | None,
                   role: Role) -> None:
        """A form POST: the right role and the CSRF token of the caller's login, else 403."""
        if not who.can(role):
            raise PermissionDeniedError(f"{who.name} is a {who.role.value}; this needs the "
                                        f"role {role.value} or higher")
        if not csrf_ok(request, csrf):
            raise PermissionDeniedError("the form's CSRF token is missing or belongs to another "
                                        "session; reload the page and try again")

    # -- rendering ------------------------------------------------------------------------
    def render(self, request: Request, template: str, who: Principal | None,
               status_code: int = 200, **context: Any) -> HTMLResponse:
        token = request_token(request)
        page = self.env.get_template(template).render(
            request=request, who=who, csrf=csrf_token(token) if token and who else "",
            project=self.project.config.project, root=root(request),
            nav=request.url.path[len(root(request)):],
            can_approve=bool(who and who.can(Role.APPROVER)), **context)
        return HTMLResponse(page, status_code=status_code, headers=_HEADERS)

    def error(self, request: Request, who: Principal | None, status_code: int,
              message: str) -> HTMLResponse:
        return self.render(request, "error.html", who, status_code=status_code,
                           status=status_code, message=message)

    # -- readers --------------------------------------------------------------------------
    def registry(self, name: str) -> ModelRegistry:
        from medops.registry import ModelRegistry

        if name == self.project.config.model_name:
            return self.project.registry
        return ModelRegistry(self.project.tracker.client, name,
                             self.project.artifacts / "models")

    def lifecycle(self, name: str) -> ModelLifecycle:
        from medops.registry import ModelLifecycle

        return ModelLifecycle(self.registry(name), self.project.state)

    def run_files(self) -> RunFiles:
        from medops.registry.browse import RunFiles

        return RunFiles(self.project.tracker.client,
                        self.project.artifacts / "cache" / "dashboard")

    def cached(self, key: tuple[str, ...], make: Callable[[], T]) -> T:
        """``make()``, reused for :data:`REGISTRY_TTL_SECONDS` under ``key``."""
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < REGISTRY_TTL_SECONDS:
            return hit[1]
        value = make()
        with self._lock:
            self._cache[key] = (now, value)
        return value

    def forget(self) -> None:
        """Drop cached registry reads (after this worker changed the registry)."""
        with self._lock:
            self._cache.clear()

    @cached_property
    def monitor_results(self) -> MonitorResults:
        return MonitorResults(self.project.state.db)

    @cached_property
    def serving_stats(self) -> ServingStats:
        return ServingStats(self.project.state.db)

    @property
    def mlflow_url(self) -> str | None:
        """The MLflow UI people open: the configured public URL, else the tracking URI when
        it is a web address (a local SQLite store has no UI to link to)."""
        configured = self.settings.mlflow_ui
        if configured:
            return str(configured).rstrip("/")
        uri = self.project.config.storage.tracking
        if uri.startswith(("http://", "https://")):
            parts = urlsplit(uri)
            return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{parts.path}".rstrip("/")
        return None


#: Pages hold what only a logged-in user may see: never cached, never framed elsewhere.
_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                       "style-src 'self'; frame-ancestors 'none'; "
                                       "form-action 'self'"}


def forbidden(exc: PermissionDeniedError) -> Response:
    return Response(str(exc), status_code=403, media_type="text/plain")


def _when(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _ago(value: datetime | None) -> str:
    if value is None:
        return "-"
    seconds = (datetime.now(timezone.utc) - value.astimezone(timezone.utc)).total_seconds()
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "-" if number != number else f"{number:.{digits}f}"
