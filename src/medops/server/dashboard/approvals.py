"""``/approvals``: the versions waiting for a sign-off, and the form that gives it.

Approving and rejecting go through :class:`medops.registry.ModelLifecycle`, the functions
`medops models approve|reject` call, with the logged-in user as the actor: the audit row names
who pressed the button, and nobody can type another name. Everyone may see the queue; only an
approver or an admin gets the buttons, and a POST from anyone else is refused (403) whatever
the form says.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from medops.errors import ConfigError, NotFoundError, PermissionDeniedError, SignOffError
from medops.registry.lifecycle import VersionStatus
from medops.server.auth import Role
from medops.server.dashboard.models import is_pending, model_names, versions
from medops.server.dashboard.web import Dashboard, Viewer, forbidden, redirect
from medops.storage import AuditEntry

#: The audit actions shown as recent decisions under the queue.
DECISIONS = ("model.approved", "model.rejected", "model.rolled_back")


@dataclass(frozen=True)
class Pending:
    name: str
    status: VersionStatus
    champion: VersionStatus | None

    @property
    def gate_metric(self) -> str | None:
        return self.status.info.tags.get("gate_metric")

    def metric(self, of: VersionStatus | None) -> float | None:
        if of is None or not self.gate_metric:
            return None
        return of.metrics.get(f"test_{self.gate_metric}")


def pending(dash: Dashboard) -> list[Pending]:
    out = []
    for name in model_names(dash):
        found = versions(dash, name)
        champion = next((v for v in found if v.live), None)
        out += [Pending(name, v, champion) for v in found if is_pending(v)]
    return out


def decisions(dash: Dashboard, limit: int = 20) -> list[AuditEntry]:
    found = dash.project.state.audit_log(limit=200)
    return [a for a in found if a.action in DECISIONS][:limit]


def add_routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/approvals", response_class=HTMLResponse, include_in_schema=False)
    def approvals_page(request: Request, who: Viewer, done: str = "") -> Response:
        return dash.render(request, "approvals.html", who, queue=pending(dash),
                           decisions=decisions(dash), done=done[:200])

    @router.post("/approvals/{name}/{version}", include_in_schema=False)
    def sign_off(request: Request, name: str, version: str, action: str = Form(""),
                 note: str = Form(""), csrf: str = Form("")) -> Response:
        who = dash.principal(request)
        if who is None:
            return Response("not logged in", status_code=401, media_type="text/plain")
        try:
            dash.check_form(request, who, csrf, Role.APPROVER)
        except PermissionDeniedError as exc:
            return forbidden(exc)
        if action not in ("approve", "reject"):
            return dash.error(request, who, 400, f"unknown action {action!r}: approve or "
                                                 "reject")
        if not note.strip():
            return dash.error(request, who, 400, f"{action} {name} v{version}: a note is "
                                                 "required; write why, for the audit log")
        lifecycle = dash.lifecycle(name)
        try:
            if action == "approve":
                lifecycle.approve(version, who.name, note)
                said = f"{name} v{version} approved: it is the live champion"
            else:
                lifecycle.reject(version, who.name, note)
                said = f"{name} v{version} rejected"
        except ConfigError as exc:
            return dash.error(request, who, 400, str(exc))
        except NotFoundError as exc:
            return dash.error(request, who, 404, str(exc))
        except SignOffError as exc:
            return dash.error(request, who, 409, str(exc))
        finally:
            dash.forget()
        return redirect(request, f"/approvals?done={quote(said)}")
