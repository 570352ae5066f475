"""The JSON API of `medops server`, mounted under ``/api`` (docs/server.md lists every route).

* ``health`` (below; no credentials, no database);
* ``login`` (no credentials), ``logout`` and ``me`` (anyone logged in), ``users`` and
  ``tokens`` (admins): :mod:`.access`;
* ``runs`` (viewers; asking for a run: trainers): :mod:`.runs`;
* ``events``, ``items``, ``audit`` (viewers): :mod:`.catalog`;
* ``models``, their versions, history and sign-off (approvers), ``monitor``: :mod:`.models`.
"""

from __future__ import annotations

from fastapi import APIRouter

from medops.project import Project
from medops.server.api import access, catalog, models, runs
from medops.server.settings import ServerSettings

#: Routes that answer without credentials (everything else needs a token or session).
PUBLIC_PATHS = frozenset({"/api/health", "/api/login", "/api/openapi.json", "/api/docs",
                          "/api/docs/oauth2-redirect"})


def build_api(project: Project, settings: ServerSettings) -> APIRouter:
    router = APIRouter()

    @router.get("/health", tags=["server"])
    def health() -> dict[str, str]:
        """Liveness: answers without credentials and without touching the database."""
        return {"status": "ok"}

    router.include_router(access.build(settings))
    router.include_router(runs.build(project))
    router.include_router(catalog.build(project))
    router.include_router(models.build(project))
    return router
