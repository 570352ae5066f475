"""The dashboard of `medops server`: HTML pages rendered on the server, behind the API's login.

No front-end build and nothing from a CDN: Jinja2 templates (``templates/``), one stylesheet
(``static/``) and charts drawn as inline SVG (:mod:`.svg`). Pages:

=====================================  ==================================================
``/``                                  live version of each model, recent runs, open alerts
``/runs``, ``/runs/{id}``              runs; step timeline, outputs and errors of one
``/models``, ``/models/{name}``        registered models; the versions of one
``/models/{name}/versions/{v}``        metrics, ROC and confusion plots, lineage, model card
``/models/{name}/history``             what was live when
``/approvals``                         versions awaiting sign-off; approve or reject
``/monitor``                           drift and live quality over time, HTML reports
``/serving``                           latency p50/p95/p99 and error rates of `medops serve`
``/events``                            events and the agent's decisions
=====================================  ==================================================
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from medops.project import Project
from medops.server.dashboard import approvals, login, models, operations, overview, runs
from medops.server.dashboard.web import STATIC, Dashboard
from medops.server.settings import ServerSettings

#: The static files, by name: only these are served (no path from a request reaches the disk).
STATIC_FILES = {"medops.css": "text/css"}

__all__ = ["build"]


def build(project: Project, settings: ServerSettings) -> APIRouter:
    """The dashboard's routes over ``project``, for ``app.include_router``."""
    dash = Dashboard(project, settings)
    router = APIRouter()

    @router.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        kind = STATIC_FILES.get(name)
        if kind is None:
            return Response("not found", status_code=404, media_type="text/plain")
        return FileResponse(STATIC / name, media_type=kind,
                            headers={"Cache-Control": "public, max-age=3600"})

    for pages in (login, overview, runs, models, approvals, operations):
        pages.add_routes(router, dash)
    return router
