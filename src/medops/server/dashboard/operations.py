"""Pages about the live model: ``/monitor`` (drift and live quality over time, with the HTML
reports), ``/serving`` (latency and errors of `medops serve`) and ``/events`` (what happened,
and what the agent decided about it)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from medops.errors import NotFoundError, StoreError
from medops.server.dashboard import svg
from medops.server.dashboard.models import model_names
from medops.server.dashboard.web import Dashboard, Viewer
from medops.storage.monitoring import MonitorRecord

#: Monitor checks drawn per model; serving windows shown (one a minute: a day).
MONITOR_SHOWN = 200
SERVING_HOURS = 24
EVENTS_SHOWN = 200


@dataclass(frozen=True)
class MonitorPanel:
    model: str
    results: list[MonitorRecord]  # newest first
    drift_chart: str
    quality_chart: str


def monitor_panels(dash: Dashboard) -> list[MonitorPanel]:
    store = dash.monitor_results
    p_value = dash.project.config.monitor.p_value
    panels = []
    for name in model_names(dash):
        history = store.history(name, limit=MONITOR_SHOWN)
        if not history:
            continue
        panels.append(MonitorPanel(model=name, results=list(reversed(history)),
                                   drift_chart=drift_chart(history, p_value),
                                   quality_chart=quality_chart(history)))
    return panels


def drift_chart(history: list[MonitorRecord], p_value: float) -> str:
    """The smallest p-value of each check and of each group of tests, on a log axis."""
    groups = sorted({g for r in history for g in (r.summary.get("group_min_p") or {})})
    series = [svg.Series("all tests", [(_t(r), r.min_p_value) for r in history])]
    series += [svg.Series(g, [(_t(r), _p(r.summary.get("group_min_p", {}).get(g)))
                              for r in history]) for g in groups]
    return svg.line_chart(series, title="drift: smallest p-value per check", log_y=True,
                          y_label="p-value", rules=[(p_value, f"alarm below {p_value:g}")])


def quality_chart(history: list[MonitorRecord]) -> str:
    """Live metrics from feedback labels (accuracy, AUC...) of each check."""
    names = sorted({k for r in history for k in _quality(r).get("live", {})})
    series = [svg.Series(n, [(_t(r), _p(_quality(r).get("live", {}).get(n))) for r in history])
              for n in names]
    return svg.line_chart(series, title="live quality from feedback labels",
                          y_range=(0.0, 1.0), y_label="metric")


def is_alert(r: MonitorRecord) -> bool:
    return r.status == "drift" or bool(r.drift)


def alert_kind(r: MonitorRecord) -> str:
    checks = _quality(r).get("checks") or []
    return "quality" if any(c.get("degraded") for c in checks) else "drift"


def find_result(dash: Dashboard, result_id: int) -> MonitorRecord | None:
    store = dash.monitor_results
    for name in model_names(dash):
        found = next((r for r in store.history(name, limit=10_000) if r.id == result_id), None)
        if found is not None:
            return found
    return None


def report_file(dash: Dashboard, record: MonitorRecord) -> Path | None:
    """The report's local file (fetched from the object store when the artifact root is
    one), only if it lies under the project's artifacts: a row of the state database must not
    make the server read any file it names."""
    if not record.report:
        return None
    try:
        path = dash.project.artifact_sync.fetch_report(record.report).resolve()
    except (NotFoundError, StoreError):
        return None
    if not path.is_relative_to(dash.project.artifacts.resolve()) or not path.is_file():
        return None
    return path


@dataclass(frozen=True)
class ServingPanel:
    model: str
    windows: int
    requests: int
    errors: int
    latency_chart: str
    errors_chart: str


def serving_panels(dash: Dashboard) -> list[ServingPanel]:
    """Per-minute serving figures of each model that answered requests lately."""
    store = dash.serving_stats
    since = datetime.now(timezone.utc) - timedelta(hours=SERVING_HOURS)
    panels = []
    for name in model_names(dash):
        rows = store.series(name, since)
        if not rows:
            continue
        at = [w.start.timestamp() for w in rows]
        latency = [svg.Series("p50", list(zip(at, [w.p50_ms for w in rows], strict=True))),
                   svg.Series("p95", list(zip(at, [w.p95_ms for w in rows], strict=True))),
                   svg.Series("p99", list(zip(at, [w.p99_ms for w in rows], strict=True)))]
        errors = [svg.Series("4xx", [(t, _rate(w.errors_4xx, w.requests))
                                     for t, w in zip(at, rows, strict=True)]),
                  svg.Series("5xx", [(t, _rate(w.errors_5xx, w.requests))
                                     for t, w in zip(at, rows, strict=True)])]
        panels.append(ServingPanel(
            model=name, windows=len(rows), requests=sum(w.requests for w in rows),
            errors=sum(w.errors_4xx + w.errors_5xx for w in rows),
            latency_chart=svg.line_chart(latency, title="latency per minute", y_label="ms",
                                         y_range=(0.0, _top(w.p99_ms for w in rows))),
            errors_chart=svg.line_chart(errors, title="error rate per minute",
                                        y_label="% of requests",
                                        y_range=(0.0, _top(y for e in errors
                                                           for _, y in e.points)))))
    return panels


def add_routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/monitor", response_class=HTMLResponse, include_in_schema=False)
    def monitor_page(request: Request, who: Viewer) -> Response:
        return dash.render(request, "monitor.html", who, panels=monitor_panels(dash),
                           is_alert=is_alert)

    @router.get("/monitor/reports/{result_id}", include_in_schema=False)
    def monitor_report(request: Request, who: Viewer, result_id: int) -> Response:
        record = find_result(dash, result_id)
        path = None if record is None else report_file(dash, record)
        if path is None:
            return dash.error(request, who, 404, f"monitor check {result_id} has no report "
                                                 "on this server")
        # The report is a document of its own (inline styles and scripts): it gets a
        # sandbox instead of the pages' policy, so it cannot act as the logged-in user.
        return FileResponse(path, media_type="text/html", headers={
            "Cache-Control": "no-store", "Content-Security-Policy": "sandbox",
            "X-Content-Type-Options": "nosniff"})

    @router.get("/serving", response_class=HTMLResponse, include_in_schema=False)
    def serving_page(request: Request, who: Viewer) -> Response:
        return dash.render(request, "serving.html", who, panels=serving_panels(dash),
                           hours=SERVING_HOURS)

    @router.get("/events", response_class=HTMLResponse, include_in_schema=False)
    def events_page(request: Request, who: Viewer, kind: str = "") -> Response:
        events = dash.project.state.event_log(kind or None, limit=EVENTS_SHOWN)
        return dash.render(request, "events.html", who, events=events, kind=kind,
                           payload=_payload)


def _payload(payload: dict[str, Any]) -> str:
    """An event's payload in one line: keys and short values (they hold ids and counts)."""
    parts = []
    for k, v in payload.items():
        text = str(v)
        parts.append(f"{k}={text if len(text) <= 60 else text[:57] + '...'}")
    return ", ".join(parts)


def _quality(r: MonitorRecord) -> dict[str, Any]:
    found = r.summary.get("quality")
    return found if isinstance(found, dict) else {}


def _t(r: MonitorRecord) -> float:
    return r.window_end.timestamp()


def _p(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _top(values: Iterable[float | None]) -> float:
    """An axis' upper end: a little above the largest value (1 without any)."""
    found = [v for v in values if v is not None]
    return max(found) * 1.1 if found and max(found) > 0 else 1.0


def _rate(errors: int, requests: int) -> float | None:
    """Percent of the requests."""
    return 100 * errors / requests if requests else None
