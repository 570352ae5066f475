"""Registered models: versions with metrics, what was live when, sign-off, monitor checks.

Sign-off goes through :class:`medops.registry.ModelLifecycle`, the functions `medops models
approve/reject/rollback` call, with the authenticated caller as the actor: the audit row names
who was logged in, never a name the client typed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from medops.errors import ConfigError, MedopsError, RegistryError, RequestError
from medops.project import Project
from medops.server.auth import Principal, Role, require
from medops.storage.monitoring import MonitorRecord, MonitorResults

if TYPE_CHECKING:  # MLflow and the registry load at the first request that needs them
    from medops.registry import ModelLifecycle, VersionStatus

Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Approver = Annotated[Principal, Depends(require(Role.APPROVER))]
#: How long the registry's answers (versions, model names) are reused; see _Lifecycles.
CACHE_SECONDS = 2.0


@contextmanager
def guard() -> Iterator[None]:
    """A bad value the client sent (a ConfigError below) is a 400; MLflow failing (down,
    refusing) is a 502 naming it; neither is a 500."""
    try:
        yield
    except ConfigError as exc:
        raise RequestError(str(exc)) from None
    except MedopsError:
        raise
    except Exception as exc:
        raise RegistryError(f"the MLflow registry failed: {type(exc).__name__}: "
                            f"{str(exc)[:300]}") from exc


class SignOff(BaseModel):
    """Why: a note is required, and goes to the audit log with the caller's name."""

    model_config = ConfigDict(extra="forbid")
    note: str = Field(min_length=1, max_length=4000)

    @field_validator("note")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the note is blank; say why (it goes to the audit log)")
        return value.strip()


class Rollback(SignOff):
    to: str | None = None  # default: the version live before the current one


class _Lifecycles:
    """One ModelLifecycle per model name, made once, and the registry's answers for a moment.

    Listing a model's versions costs MLflow one query per version; fifty dashboards asking
    every few seconds would keep the registry busy for the same answer. Reads are therefore
    kept :data:`CACHE_SECONDS`; a sign-off through this process drops its model's entry at
    once, and one made elsewhere (the CLI, the agent, another worker) shows within that time.
    """

    def __init__(self, project: Project) -> None:
        self.project = project
        self._lock = threading.Lock()
        self._made: dict[str, ModelLifecycle] = {}
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}

    def __call__(self, name: str) -> ModelLifecycle:
        with self._lock:
            found = self._made.get(name)
        if found is None:
            with guard():  # outside the lock: MLflow may take a while to answer
                found = self._make(name)
            with self._lock:
                found = self._made.setdefault(name, found)
        return found

    def _make(self, name: str) -> ModelLifecycle:
        from medops.registry import ModelLifecycle, ModelRegistry

        if name == self.project.config.model_name:
            registry = self.project.registry
        else:
            registry = ModelRegistry(self.project.tracker.client, name,
                                     self.project.artifacts / "models")
        registry.check_exists()  # NotFoundError naming the registered models
        return ModelLifecycle(registry, self.project.state)

    def _cached(self, key: tuple[str, str], make: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        with guard():
            value = make()
        with self._lock:
            self._cache[key] = (now, value)
        return value

    def versions(self, name: str) -> list[VersionStatus]:
        return list(self._cached(("versions", name), lambda: self(name).versions()))

    def names(self) -> list[str]:
        client = self.project.tracker.client
        return list(self._cached(("names", ""), lambda: sorted(
            m.name for m in client.search_registered_models())))

    def changed(self, name: str) -> None:
        """``name`` was signed off here: its next read asks MLflow again."""
        with self._lock:
            self._cache.pop(("versions", name), None)


def version_to_dict(v: VersionStatus) -> dict[str, Any]:
    out = v.to_dict()
    tags = v.info.tags
    out["run"] = tags.get("medops_run_id")
    out["rejected_by"] = tags.get("rejected_by")
    out["note"] = tags.get("approval_note")
    return out


def monitor_to_dict(r: MonitorRecord) -> dict[str, Any]:
    return {"id": r.id, "model": r.model, "version": r.version,
            "window_start": r.window_start.isoformat(), "window_end": r.window_end.isoformat(),
            "status": r.status, "drift": r.drift, "min_p_value": r.min_p_value,
            "n_current": r.n_current, "n_reference": r.n_reference, "n_labelled": r.n_labelled,
            "summary": r.summary, "report": r.report,
            "created_at": r.created_at.isoformat() if r.created_at else None}


def build(project: Project) -> APIRouter:
    router = APIRouter(tags=["models"])
    lifecycles = _Lifecycles(project)
    monitor = MonitorResults(project.state.db)

    def one(name: str, version: str) -> VersionStatus:
        found = next((v for v in lifecycles.versions(name) if v.info.version == version), None)
        if found is None:  # not listed (yet): the registry says why, naming the version
            with guard():
                lifecycles(name).registry.get(version)
            lifecycles.changed(name)  # it exists: registered since the listing was kept
            found = next((v for v in lifecycles.versions(name)
                          if v.info.version == version), None)
        if found is None:
            raise RequestError(f"{name} v{version} changed while it was read; try again")
        return found

    @router.get("/models")
    def models(caller: Viewer) -> list[dict[str, Any]]:
        """The registered models, each with its live version (None if none is live)."""
        out = []
        for name in lifecycles.names():
            live = project.state.live_deployment(name)
            out.append({"name": name, "project_model": name == project.config.model_name,
                        "live_version": live.version if live else None})
        return out

    @router.get("/models/{name}/versions")
    def versions(name: str, caller: Viewer) -> list[dict[str, Any]]:
        """Every version, newest first: metrics, gate, approval, whether it is live."""
        return [version_to_dict(v) for v in lifecycles.versions(name)]

    @router.get("/models/{name}/versions/{version}")
    def version(name: str, version: str, caller: Viewer) -> dict[str, Any]:
        return version_to_dict(one(name, version))

    @router.get("/models/{name}/history")
    def history(name: str, caller: Viewer, at: str | None = None) -> dict[str, Any]:
        """Every period a version was live (approvals, auto-approvals, rollbacks), oldest
        first; with ``at`` (ISO 8601, naive = UTC) also the one live then."""
        from medops.registry.lifecycle import deployment_to_dict, parse_time

        lifecycle = lifecycles(name)
        out: dict[str, Any] = {"model": name, "deployments": [
            deployment_to_dict(d) for d in lifecycle.history()]}
        if at is not None:
            with guard():
                when = parse_time(at)
            live = lifecycle.live_at(when)
            out["at"] = when.isoformat()
            out["live_at"] = deployment_to_dict(live) if live else None
        return out

    @router.post("/models/{name}/versions/{version}/approve")
    def approve(name: str, version: str, body: SignOff, caller: Approver) -> dict[str, Any]:
        """Make ``version`` the live champion; the caller and the note go to the audit log."""
        from medops.registry.lifecycle import deployment_to_dict

        with guard():
            done = lifecycles(name).approve(version, caller.name, body.note)
        lifecycles.changed(name)
        return deployment_to_dict(done)

    @router.post("/models/{name}/versions/{version}/reject")
    def reject(name: str, version: str, body: SignOff, caller: Approver) -> dict[str, Any]:
        """Mark ``version`` rejected (never the live champion: roll back first, 409)."""
        with guard():
            lifecycles(name).reject(version, caller.name, body.note)
        lifecycles.changed(name)
        return version_to_dict(one(name, version))

    @router.post("/models/{name}/rollback")
    def rollback(name: str, body: Rollback, caller: Approver) -> dict[str, Any]:
        """Make an earlier live version the champion again (``to``, or the one before)."""
        from medops.registry.lifecycle import deployment_to_dict

        with guard():
            done = lifecycles(name).rollback(caller.name, body.note, body.to)
        lifecycles.changed(name)
        return deployment_to_dict(done)

    @router.get("/monitor", tags=["monitor"])
    def monitor_results(caller: Viewer, model: str | None = None, version: str | None = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
                        ) -> list[dict[str, Any]]:
        """Drift and live-quality checks of ``model`` (default: the project's), oldest
        first."""
        found = monitor.history(model or project.config.model_name, version, limit)
        return [monitor_to_dict(r) for r in found]

    return router
