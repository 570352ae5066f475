"""Read-only views of the state: events with the agent's decisions, items, the audit log."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from medops.config import EventKind
from medops.project import Project
from medops.server.auth import Principal, Role, require
from medops.storage import AuditEntry, Item, ItemStatus

Viewer = Annotated[Principal, Depends(require(Role.VIEWER))]
Limit = Annotated[int, Query(ge=1, le=1000)]



def item_to_dict(i: Item) -> dict[str, Any]:
    return {"id": i.id, "uri": i.uri, "frame": i.frame, "source": i.source, "label": i.label,
            "status": i.status.value, "reason": i.reason,
            "split": i.split.value if i.split else None}


def audit_to_dict(a: AuditEntry) -> dict[str, Any]:
    found = {"id": a.id, "at": a.at.isoformat(), "action": a.action, "actor": a.actor,
             "target": a.target, "details": a.details}
    for extra in ("prev_hash", "hash"):  # the hash chain, where the store keeps one
        if hasattr(a, extra):
            found[extra] = getattr(a, extra)
    return found


def build(project: Project) -> APIRouter:
    router = APIRouter(tags=["state"])

    @router.get("/events")
    def events(caller: Viewer, kind: EventKind | None = None,
               limit: Limit = 100) -> list[dict[str, Any]]:
        """Events, newest first, each with the agent's decision and its reason."""
        return [e.to_dict() for e in project.state.event_log(kind, limit)]

    @router.get("/items")
    def items(caller: Viewer) -> dict[str, Any]:
        """How many items the catalog holds, by source and status."""
        by_source = project.state.item_counts()
        by_status: dict[str, int] = {}
        for counts in by_source.values():
            for status, n in counts.items():
                by_status[status] = by_status.get(status, 0) + n
        return {"total": sum(by_status.values()), "by_status": by_status,
                "by_source": by_source}

    @router.get("/items/quarantine")
    def quarantine(caller: Viewer, source: str | None = None,
                   limit: Limit = 200) -> dict[str, Any]:
        """Quarantined items with the reason each was set aside."""
        found = project.state.items(ItemStatus.QUARANTINED, source)
        return {"total": len(found), "items": [item_to_dict(i) for i in found[:limit]]}

    @router.get("/audit")
    def audit(caller: Viewer, target: str | None = None,
              limit: Limit = 100) -> list[dict[str, Any]]:
        """The audit log, newest first (sign-offs, user and token changes, discards)."""
        return [audit_to_dict(a) for a in project.state.audit_log(target, limit)]

    return router
