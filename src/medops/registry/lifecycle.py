"""Sign-off: approve, reject and roll back model versions, with an audit trail and a history.

MLflow knows which version the ``champion`` alias points at *now*; medops also records who moved
it, when and why (the audit log) and every period a version was live (the deployments table),
so "which version was live at time T" has an answer. Each champion move stores the events
``model.approved`` (approvals only) and ``model.deployed``, for the agent and the server.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from medops.errors import ConfigError, NotFoundError, SignOffError
from medops.registry.registry import CHAMPION, ModelRegistry, ModelVersionInfo
from medops.storage import AuditEntry, DeploymentRecord, EventKind, StateStore
from medops.storage.state import utcnow

#: The actor recorded when ``registry.approval: auto`` promotes a version that passed its gate.
AUTO_ACTOR = "medops (approval: auto)"

APPROVED = "approved"
REJECTED = "rejected"
PENDING = "pending"


@dataclass
class VersionStatus:
    """One version as a reviewer sees it: metrics, gate, approval and whether it is live."""

    info: ModelVersionInfo
    live: bool
    live_since: datetime | None

    @property
    def approval(self) -> str:
        return self.info.tags.get("approval", PENDING)

    @property
    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, value in self.info.tags.items():
            if key.startswith("test_"):
                try:
                    out[key] = float(value)
                except ValueError:
                    continue
        return out

    def to_dict(self) -> dict[str, Any]:
        tags = self.info.tags
        return {**self.info.to_dict(), "metrics": self.metrics, "gate": tags.get("gate"),
                "approval": self.approval, "approved_by": tags.get("approved_by"),
                "approved_at": tags.get("approved_at"), "live": self.live,
                "live_since": self.live_since.isoformat() if self.live_since else None}


def deployment_to_dict(d: DeploymentRecord) -> dict[str, Any]:
    return {"model": d.model, "version": d.version, "live_from": d.live_from.isoformat(),
            "live_until": d.live_until.isoformat() if d.live_until else None,
            "actor": d.actor, "note": d.note, "action": d.action}


class ModelLifecycle:
    """Sign-off for the versions of one registered model."""

    def __init__(self, registry: ModelRegistry, state: StateStore) -> None:
        self.registry = registry
        self.state = state

    @property
    def name(self) -> str:
        return self.registry.name

    # -- sign-off -------------------------------------------------------------------------
    def approve(self, version: str, by: str, note: str, *,
                action: str = "approve") -> DeploymentRecord:
        """Make ``version`` the live champion. Approving the live champion again changes
        nothing and returns its current deployment."""
        by, note = _who(by), _why(note)
        info = self.registry.get(version)  # NotFoundError for an unknown version
        live = self.state.live_deployment(self.name)
        champion = self.registry.by_alias(CHAMPION)
        if champion is not None and champion.version == info.version and live is not None \
                and live.version == info.version:
            return live
        at = utcnow()
        previous = champion.version if champion else None
        audit = AuditEntry("model.approved", by, f"{self.name}/{info.version}",
                           {"note": note, "previous": previous, "action": action}, at)
        deployment = self._move_champion(info.version, previous, by, note, action, at, audit)
        self.registry.set_tags(info.version, {
            "approval": APPROVED, "approved_by": by, "approved_at": at.isoformat(),
            "approval_note": note})
        kind = EventKind.MODEL_APPROVED
        self.state.add_event(kind, {"name": self.name, "version": info.version, "actor": by},
                             idempotency_key=f"{kind}:{self.name}:{deployment.id}")
        self._deployed_event(deployment, previous)
        return deployment

    def reject(self, version: str, by: str, note: str) -> ModelVersionInfo:
        """Mark ``version`` rejected. The live champion cannot be rejected: roll back first."""
        by, note = _who(by), _why(note)
        info = self.registry.get(version)
        champion = self.registry.by_alias(CHAMPION)
        if champion is not None and champion.version == info.version:
            raise SignOffError(
                f"{self.name} v{info.version} is the live champion and cannot be rejected; "
                f"roll back first: `medops models rollback {self.name} --by ... --note ...`")
        at = utcnow()
        self.registry.set_tags(info.version, {
            "approval": REJECTED, "rejected_by": by, "rejected_at": at.isoformat(),
            "approval_note": note})
        self.state.audit("model.rejected", by, f"{self.name}/{info.version}", {"note": note})
        return self.registry.get(info.version)

    def rollback(self, by: str, note: str, to: str | None = None) -> DeploymentRecord:
        """Make an earlier live version the champion again: ``to``, or else the version that
        was live before the current one (skipping rejected versions)."""
        by, note = _who(by), _why(note)
        champion = self.registry.by_alias(CHAMPION)
        if champion is None:
            raise SignOffError(f"{self.name} has no live champion to roll back from; "
                               f"approve a version: `medops models approve {self.name} VERSION`")
        history = self.state.deployments(self.name)
        if to is None:
            target = self._previous(history, champion.version)
        else:
            target = self.registry.get(to).version
            if target == champion.version:
                raise SignOffError(f"{self.name} v{target} is already the live champion")
            if not any(d.version == target for d in history):
                raise SignOffError(
                    f"{self.name} v{target} was never live, so it cannot be rolled back to; "
                    f"approve it instead: `medops models approve {self.name} {target}`")
            if self.registry.get(target).tags.get("approval") == REJECTED:
                raise SignOffError(f"{self.name} v{target} was rejected; approve it again to "
                                   "make it live")
        at = utcnow()
        audit = AuditEntry("model.rolled_back", by, f"{self.name}/{target}",
                           {"note": note, "previous": champion.version}, at)
        deployment = self._move_champion(target, champion.version, by, note, "rollback", at,
                                         audit)
        self._deployed_event(deployment, champion.version)
        return deployment

    def auto_approve(self, version: str, reasons: list[str]) -> DeploymentRecord:
        """``registry.approval: auto``: promote a version that passed its gate."""
        return self.approve(version, AUTO_ACTOR, "passed the gate: " + "; ".join(reasons),
                            action="auto-approve")

    # -- queries --------------------------------------------------------------------------
    def history(self) -> list[DeploymentRecord]:
        """Every period a version was live, oldest first."""
        return self.state.deployments(self.name)

    def live_at(self, at: datetime) -> DeploymentRecord | None:
        """The deployment live at ``at`` (a naive time is taken as UTC), or None."""
        return self.state.live_deployment(self.name, as_utc(at))

    def versions(self) -> list[VersionStatus]:
        """Every version, newest first, with its approval state and whether it is live."""
        live = self.state.live_deployment(self.name)
        out = []
        for info in self.registry.versions():
            is_live = CHAMPION in info.aliases
            since = live.live_from if is_live and live and live.version == info.version else None
            out.append(VersionStatus(info=info, live=is_live, live_since=since))
        return out

    # -- helpers --------------------------------------------------------------------------
    def _previous(self, history: list[DeploymentRecord], current: str) -> str:
        for d in reversed(history):
            if d.version == current:
                continue
            try:
                info = self.registry.get(d.version)
            except NotFoundError:  # deleted from MLflow since
                continue
            if info.tags.get("approval") != REJECTED:
                return info.version
        raise SignOffError(f"{self.name} has no earlier live version to roll back to "
                           f"(v{current} is the only one); use --to VERSION or approve another")

    def _move_champion(self, version: str, previous: str | None, by: str, note: str,
                       action: str, at: datetime, audit: AuditEntry) -> DeploymentRecord:
        self.registry.set_alias(CHAMPION, version)
        try:  # the history and its audit row: one transaction
            return self.state.record_deployment(self.name, version, by, note, action, at,
                                                audit=audit)
        except Exception:
            # The history must not miss a champion move: put the alias back as it was.
            if previous is None:
                self.registry.delete_alias(CHAMPION)
            else:
                self.registry.set_alias(CHAMPION, previous)
            raise

    def _deployed_event(self, d: DeploymentRecord, previous: str | None) -> None:
        self.state.add_event(EventKind.MODEL_DEPLOYED, {
            "name": self.name, "version": d.version, "previous": previous,
            "action": d.action, "actor": d.actor, "alias": CHAMPION,
        }, idempotency_key=f"{EventKind.MODEL_DEPLOYED}:{self.name}:{d.id}")


def as_utc(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``2026-01-31T12:00:00Z``, or naive = UTC) as an aware datetime."""
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith(("Z", "z")) else raw)
    except ValueError as exc:
        raise ConfigError(f"{text!r} is not an ISO 8601 time; e.g. 2026-01-31T12:00:00Z") from exc
    return as_utc(value)


def _who(by: str) -> str:
    if not by or not by.strip():
        raise ConfigError("a sign-off needs the name of who signs off: --by NAME")
    return by.strip()


def _why(note: str) -> str:
    if not note or not note.strip():
        raise ConfigError("a sign-off needs a reason for the audit log: --note TEXT")
    return note.strip()
