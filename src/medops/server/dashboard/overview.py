"""``/``: the live version of each model, recent runs and what needs someone's attention."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from medops.errors import MedopsError
from medops.server.dashboard.approvals import pending
from medops.server.dashboard.models import model_names, model_rows
from medops.server.dashboard.operations import alert_kind, is_alert
from medops.server.dashboard.runs import last_step, took
from medops.server.dashboard.web import Dashboard, Viewer
from medops.storage import RunStatus

RECENT_RUNS = 10


@dataclass(frozen=True)
class Alert:
    """Something open: drift or a quality drop, a failed run, a version awaiting sign-off."""

    kind: str  # drift, quality, run, approval, registry
    text: str
    link: str
    at: datetime | None


def alerts(dash: Dashboard) -> list[Alert]:
    out: list[Alert] = []
    store = dash.monitor_results
    for name in model_names(dash):
        latest = store.history(name, limit=1)
        if latest and is_alert(latest[-1]):
            check = latest[-1]
            kind = alert_kind(check)
            out.append(Alert(kind, f"{name} v{check.version}: {kind} in the window ending "
                                   f"{check.window_end:%Y-%m-%d %H:%M} ({check.n_current} "
                                   "images)", "/monitor", check.window_end))
    for run in dash.project.state.list_runs(RECENT_RUNS * 2):
        if run.status is RunStatus.FAILED:
            step = next((s.name for s in run.steps if s.status.value == "failed"), "?")
            out.append(Alert("run", f"run {run.id} failed at {step}", f"/runs/{run.id}",
                             run.finished_at or run.started_at))
    for p in pending(dash):
        out.append(Alert("approval", f"{p.name} v{p.status.info.version} awaits sign-off",
                         "/approvals", p.status.info.created_at))
    return out


def add_routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def overview(request: Request, who: Viewer) -> Response:
        problems = []
        try:
            models, found = model_rows(dash), alerts(dash)
        except MedopsError as exc:  # MLflow unreachable: the runs still show
            models, found = [], [Alert("registry", str(exc), "/models", None)]
            problems.append(str(exc))
        runs = dash.project.state.list_runs(RECENT_RUNS)
        return dash.render(request, "overview.html", who, models=models, alerts=found,
                           runs=runs, took=took, last_step=last_step, problems=problems)
