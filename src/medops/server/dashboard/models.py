"""Model pages: the registered models, one model's versions, one version (metrics, plots,
lineage, model card), and its production history ("what was live when")."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from medops.errors import MedopsError, NotFoundError
from medops.server.dashboard import svg
from medops.server.dashboard.web import Dashboard, Viewer
from medops.storage import DeploymentRecord

if TYPE_CHECKING:
    from medops.registry import VersionStatus
    from medops.registry.model_card import ModelCard

#: The run artifact folders a version page may show files of.
SHOWN_FOLDERS = ("evaluation", "model_card")
#: Training curves drawn on a version page, in pairs sharing an axis.
CURVES = (("train_loss", "val_loss"), ("val_auc", "val_accuracy"))


@dataclass(frozen=True)
class ModelRow:
    """A registered model on the overview and the models list."""

    name: str
    versions: int
    live: str | None
    live_since: datetime | None
    pending: int


@dataclass(frozen=True)
class VersionPage:
    name: str
    status: VersionStatus
    metrics: dict[str, float]
    plots: list[str]
    curves: list[str]
    lineage: dict[str, str]
    card: ModelCard | None
    mlflow_run: str | None
    mlflow_version: str | None
    problems: list[str] = field(default_factory=list)


def model_names(dash: Dashboard) -> list[str]:
    """Every registered model, the project's own first (it may have no version yet)."""
    from medops.registry.browse import registered_models

    own = dash.project.config.model_name
    found = dash.cached(("models",), lambda: registered_models(dash.project.tracker.client))
    return [own, *(n for n in found if n != own)]


def versions(dash: Dashboard, name: str) -> list[VersionStatus]:
    """The versions of ``name``, newest first (cached for a moment: see web.REGISTRY_TTL)."""
    return dash.cached(("versions", name), lambda: dash.lifecycle(name).versions())


def model_rows(dash: Dashboard) -> list[ModelRow]:
    rows = []
    for name in model_names(dash):
        found = versions(dash, name)
        live = next((v for v in found if v.live), None)
        rows.append(ModelRow(name=name, versions=len(found),
                             live=live.info.version if live else None,
                             live_since=live.live_since if live else None,
                             pending=sum(1 for v in found if is_pending(v))))
    return rows


def is_pending(v: VersionStatus) -> bool:
    """Waiting for a sign-off: registered past the gate, neither approved nor rejected."""
    return v.approval == "pending" and not v.live


def version_page(dash: Dashboard, name: str, version: str) -> VersionPage:
    status = next((v for v in versions(dash, name) if v.info.version == version), None)
    if status is None:
        raise NotFoundError(f"model {name!r} has no version {version!r}")
    info, problems = status.info, []
    metrics: dict[str, float] = dict(status.metrics)
    plots: list[str] = []
    curves: list[str] = []
    card = None
    if info.run_id:
        files = dash.run_files()
        try:
            history = dash.project.tracker.metric_history(info.run_id)
            metrics.update({k: v[-1][1] for k, v in history.items()
                            if k.startswith("test_") and v})
            curves = [svg.line_chart(
                [svg.Series(n, [(float(s), y) for s, y in history.get(n, [])]) for n in pair],
                title=" and ".join(pair), x_time=False, y_label="per epoch")
                for pair in CURVES if any(history.get(n) for n in pair)]
            plots = [f"evaluation/{f}" for f in files.list(info.run_id, "evaluation")
                     if f.endswith(".png")]
            card = files.model_card(info.run_id)
        except MedopsError as exc:  # MLflow down or the run deleted: show what the tags say
            problems.append(str(exc))
    tags = info.tags
    lineage = {"dataset version": tags.get("dataset_version", "-"),
               "git commit": tags.get("git_commit", "-"),
               "weights SHA-256": tags.get("weights_sha256")
               or (card.weights_sha256 if card else None) or "-",
               "preprocessing profile": tags.get("preprocess_profile", "-"),
               "medops run": tags.get("medops_run_id", "-"),
               "MLflow run": info.run_id or "-"}
    if card is not None:
        init = card.network.get("init_weights") or {}
        if init.get("sha256"):
            lineage["initial weights SHA-256"] = str(init["sha256"])
        for key in ("medops_version", "medops_commit"):
            if card.lineage.get(key):
                lineage[key.replace("_", " ")] = str(card.lineage[key])
    base = dash.mlflow_url
    experiment = _experiment(dash)
    return VersionPage(
        name=name, status=status, metrics=dict(sorted(metrics.items())), plots=plots,
        curves=curves, lineage=lineage, card=card,
        mlflow_run=f"{base}/#/experiments/{experiment}/runs/{info.run_id}"
        if base and experiment and info.run_id else None,
        mlflow_version=f"{base}/#/models/{quote(name)}/versions/{info.version}" if base else None,
        problems=problems)


def _experiment(dash: Dashboard) -> str | None:
    try:
        return dash.cached(("experiment",), lambda: dash.project.tracker.experiment_id)
    except Exception:  # only a link is lost
        return None


def history_chart(history: list[DeploymentRecord]) -> str:
    now = datetime.now(timezone.utc)
    bars = [svg.Bar(label=f"v{d.version}", start=d.live_from, end=d.live_until or now,
                    status="running" if d.live_until is None else "succeeded",
                    title=f"v{d.version} live from {d.live_from:%Y-%m-%d %H:%M} "
                          f"({d.action} by {d.actor})") for d in history]
    return svg.timeline(bars, title="what was live when")


def add_routes(router: APIRouter, dash: Dashboard) -> None:
    @router.get("/models", response_class=HTMLResponse, include_in_schema=False)
    def models_page(request: Request, who: Viewer) -> Response:
        return dash.render(request, "models.html", who, models=model_rows(dash),
                           mlflow=dash.mlflow_url)

    @router.get("/models/{name}", response_class=HTMLResponse, include_in_schema=False)
    def model_page(request: Request, who: Viewer, name: str) -> Response:
        found = versions(dash, name)
        if not found and name not in model_names(dash):
            return dash.error(request, who, 404, f"no registered model named {name!r}")
        return dash.render(request, "model.html", who, name=name, versions=found,
                           pending=is_pending, mlflow=dash.mlflow_url)

    @router.get("/models/{name}/versions/{version}", response_class=HTMLResponse,
                include_in_schema=False)
    def version_view(request: Request, who: Viewer, name: str, version: str) -> Response:
        try:
            page = version_page(dash, name, version)
        except NotFoundError as exc:
            return dash.error(request, who, 404, str(exc))
        return dash.render(request, "version.html", who, page=page, name=name,
                           pending=is_pending(page.status))

    @router.get("/models/{name}/versions/{version}/files/{path:path}",
                include_in_schema=False)
    def version_file(request: Request, who: Viewer, name: str, version: str, path: str) -> Response:
        status = next((v for v in versions(dash, name) if v.info.version == version), None)
        if status is None or not status.info.run_id or path.split("/")[0] not in SHOWN_FOLDERS:
            return Response("not found", status_code=404, media_type="text/plain")
        try:
            local = dash.run_files().fetch(status.info.run_id, path)
        except NotFoundError as exc:
            return Response(str(exc), status_code=404, media_type="text/plain")
        kind = mimetypes.guess_type(local.name)[0] or "application/octet-stream"
        return FileResponse(local, media_type=kind,
                            headers={"Cache-Control": "private, max-age=300",
                                     "X-Content-Type-Options": "nosniff"})

    @router.get("/models/{name}/history", response_class=HTMLResponse, include_in_schema=False)
    def history_page(request: Request, who: Viewer, name: str) -> Response:
        history = dash.project.state.deployments(name)
        return dash.render(request, "history.html", who, name=name,
                           history=list(reversed(history)), chart=history_chart(history),
                           seconds=_seconds)


def _seconds(d: DeploymentRecord) -> float:
    end = d.live_until or datetime.now(timezone.utc)
    return (end - d.live_from).total_seconds()
