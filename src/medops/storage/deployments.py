"""Which version of a model was live when: MLflow aliases only know the present.

Each champion move ends the live period of the version before it and starts one for the new
version; with ``audit``, the audit row that records the move is written in the same
transaction, so the history and the audit log never disagree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from medops.storage import audit as audit_log
from medops.storage.base import Base, aware, aware_or_now, tables, utcnow
from medops.storage.engine import Database, transactional
from medops.storage.records import AuditEntry, DeploymentRecord


class _Deployment(Base):
    __tablename__ = "deployments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[str] = mapped_column(String(32))
    live_from: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    live_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(255))
    note: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(32))


TABLES = tables(_Deployment)


class DeploymentHistory:
    """The deployments table on ``db`` (and the audit log, for moves audited with it)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure((*TABLES, *audit_log.TABLES))

    def record_deployment(self, model: str, version: str, actor: str, note: str, action: str,
                          at: datetime | None = None,
                          audit: AuditEntry | None = None) -> DeploymentRecord:
        """``version`` of ``model`` is live from ``at`` (now); the live one before it ends
        then. ``audit``: its row is appended in the same transaction."""
        when = aware(at) or utcnow()
        return audit_log.first_append_retried(
            lambda: self._record(model, version, actor, note, action, when, audit))

    @transactional("record deployment")
    def _record(self, s: Session, model: str, version: str, actor: str, note: str,
                action: str, at: datetime, audit: AuditEntry | None) -> DeploymentRecord:
        s.execute(update(_Deployment).where(_Deployment.model == model,
                                            _Deployment.live_until.is_(None))
                  .values(live_until=at))
        row = _Deployment(model=model, version=version, live_from=at, live_until=None,
                          actor=actor, note=note, action=action)
        s.add(row)
        s.flush()
        if audit is not None:
            audit_log.append(self.db, s, audit.action, audit.actor, audit.target,
                             audit.details, audit.at)
        return _deployment(row)

    @transactional("read deployments")
    def deployments(self, s: Session, model: str) -> list[DeploymentRecord]:
        """Every period a version of ``model`` was live, oldest first."""
        q = select(_Deployment).where(_Deployment.model == model).order_by(_Deployment.id)
        return [_deployment(r) for r in s.scalars(q)]

    def live_deployment(self, model: str, at: datetime | None = None) -> DeploymentRecord | None:
        """The deployment of ``model`` live at ``at`` (now), or None."""
        when = aware(at) or utcnow()
        return next((d for d in reversed(self.deployments(model)) if d.live_at(when)), None)


def _deployment(r: _Deployment) -> DeploymentRecord:
    return DeploymentRecord(model=r.model, version=r.version, live_from=aware_or_now(r.live_from),
                            live_until=aware(r.live_until), actor=r.actor, note=r.note,
                            action=r.action, id=r.id)
