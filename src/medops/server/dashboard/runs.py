"""``/runs`` and ``/runs/{id}``: pipeline runs, each with a step timeline, errors and outputs.

A run's log is what `medops runs show` prints: each step's state, attempts, timings, outputs
and full error text (the state store keeps them; the process's own output is not stored).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from medops.errors import NotFoundError
from medops.server.dashboard import svg
from medops.server.dashboard.web import Dashboard, Viewer
from medops.storage import RunRecord, StepRecord

#: Runs listed on /runs.
RUNS_SHOWN = 100


@dataclass(frozen=True)
class StepRow:
    step: StepRecord
    outputs: str  # pretty JSON
    summary: str


@dataclass(frozen=True)
class RunPage:
    run: RunRecord
    steps: list[StepRow]
    timeline: str
    registered: tuple[str, str] | None  # (model, version)
    mlflow: str | None
    config: str


def took(run: RunRecord) -> float | None:
    if run.finished_at is None:
        return None
    return (run.finished_at - run.started_at).total_seconds()


def last_step(run: RunRecord) -> str:
    return next((s.name for s in reversed(run.steps) if s.status.value != "pending"), "-")


def dataset_version(run: RunRecord) -> str | None:
    split = next((s for s in run.steps if s.name == "split"), None)
    return None if split is None else split.outputs.get("dataset_version")


def timeline_chart(run: RunRecord) -> str:
    now = datetime.now(timezone.utc)
    bars = [svg.Bar(label=s.name, start=s.started_at, end=s.finished_at or now,
                    status=s.status.value) for s in run.steps if s.started_at is not None]
    return svg.timeline(bars, title=f"steps of {run.id}")


def run_page(dash: Dashboard, run_id: str) -> RunPage:
    run = dash.project.state.get_run(run_id)  # NotFoundError for an unknown id
    rows = [StepRow(step=s, outputs=json.dumps(s.outputs, indent=2, sort_keys=True,
                                               default=str) if s.outputs else "",
                    summary=summary(s.name, s.outputs)) for s in run.steps]
    register = next((s for s in run.steps if s.name == "register"), None)
    registered = None
    if register is not None and register.outputs.get("registered"):
        registered = (str(register.outputs.get("name")), str(register.outputs.get("version")))
    base, link = dash.mlflow_url, None
    if base and run.mlflow_run_id:
        try:
            experiment = dash.cached(("experiment",),
                                     lambda: dash.project.tracker.experiment_id)
            link = f"{base}/#/experiments/{experiment}/runs/{run.mlflow_run_id}"
        except Exception:  # only the link is lost
            link = None
    return RunPage(run=run, steps=rows, timeline=timeline_chart(run), registered=registered,
                   mlflow=link, config=json.dumps(run.config, indent=2, sort_keys=True,
                                                  default=str))


def summary(step: str, out: dict[str, Any]) -> str:
    """The one line a step's outputs boil down to (as `medops runs show` prints it)."""
    keys = {"ingest": ("new", "catalog"), "validate": ("ok", "quarantined"),
            "split": ("dataset_version",), "preprocess": ("computed", "cached"),
            "train": ("best_epoch", "best_val_auc", "epochs_run"),
            "gate": ("passed",), "register": ("registered", "version", "approval")}
    if step == "evaluate":
        m = out.get("metrics") or {}
        return ", ".join(f"{k}={m[k]:.4f}" for k in ("test_auc", "test_accuracy")
                         if isinstance(m.get(k), (int, float)))
    if step == "gate" and out.get("reasons"):
        return ("passed: " if out.get("passed") else "failed: ") + "; ".join(out["reasons"])
    parts = []
    for k in keys.get(step, ()):
        v = out.get(k)
        if v is not None:
            parts.append(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}")
    return ", ".join(parts)


def add_routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/runs", response_class=HTMLResponse, include_in_schema=False)
    def runs_page(request: Request, who: Viewer, status: str = "") -> Response:
        runs = dash.project.state.list_runs(RUNS_SHOWN)
        if status:
            runs = [r for r in runs if r.status.value == status]
        return dash.render(request, "runs.html", who, runs=runs, took=took,
                           last_step=last_step, dataset=dataset_version, status=status)

    @router.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_view(request: Request, who: Viewer, run_id: str) -> Response:
        try:
            page = run_page(dash, run_id)
        except NotFoundError as exc:
            return dash.error(request, who, 404, str(exc))
        return dash.render(request, "run.html", who, page=page, took=took)
