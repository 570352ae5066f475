"""The demo's closing table: what happened, when, from the state database (runs, events and
the agent's decisions) and from what the demo itself saw (the server's answers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from rich.table import Table

from medops.agent.policy import TRIGGER_EVENTS
from medops.cli.render import console
from medops.project import Project
from medops.storage import EventDecision, EventKind, EventRecord, RunRecord


@dataclass
class Timeline:
    """The demo's own observations, kept beside what the state database records."""

    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    marks: list[tuple[datetime, str, str]] = field(default_factory=list)

    def mark(self, what: str, detail: str) -> None:
        self.marks.append((datetime.now(timezone.utc), what, detail))
        console.print(f"[bold]{what}[/bold]: {detail}", highlight=False)


@dataclass
class _Row:
    at: datetime
    what: str
    detail: str
    group: tuple[Any, ...] | None = None  # rows alike in this are shown once, with a count
    count: int = 1
    until: datetime | None = None


def timeline_table(project: Project, timeline: Timeline) -> Table:
    rows = [_Row(at, what, detail) for at, what, detail in timeline.marks]
    for run in project.state.list_runs(50):
        rows += _run_rows(run)
    for event in project.state.event_log(None, 1000):
        if event.kind != EventKind.RUN_FINISHED:  # the run's own rows say it, with its figures
            rows.append(_event_row(event))
    rows = sorted((r for r in rows if _utc(r.at) >= timeline.started), key=lambda r: _utc(r.at))
    table = Table(title="timeline", show_lines=False)
    for col in ("time", "+m:ss", "what"):
        table.add_column(col, no_wrap=True)
    table.add_column("what happened", overflow="fold")
    for row in _collapse(rows):
        at = _utc(row.at)
        elapsed = int((at - timeline.started).total_seconds())
        detail = row.detail
        if row.count > 1 and row.until is not None:
            detail += (f"  [dim](x{row.count}, the last at "
                       f"{_utc(row.until).astimezone():%H:%M:%S})[/dim]")
        table.add_row(f"{at.astimezone():%H:%M:%S}", f"+{elapsed // 60}:{elapsed % 60:02d}",
                      row.what, detail)
    return table


def _collapse(rows: list[_Row]) -> list[_Row]:
    out: list[_Row] = []
    for row in rows:
        last = out[-1] if out else None
        if last is not None and row.group is not None and row.group == last.group:
            last.count += 1
            last.until = row.at
        else:
            out.append(row)
    return out


def _run_rows(run: RunRecord) -> list[_Row]:
    rows = [_Row(run.started_at, "run", f"{run.id} started ({run.trigger})")]
    if run.finished_at is None:
        return rows
    steps = {s.name: s.outputs for s in run.steps}
    seconds = (run.finished_at - run.started_at).total_seconds()
    parts = [f"{run.id} {run.status.value} in {seconds:.0f} s"]
    auc = steps.get("evaluate", {}).get("metrics", {}).get("test_auc")
    if isinstance(auc, float):
        parts.append(f"test AUC {auc:.3f}")
    gate = steps.get("gate", {})
    if gate:
        parts.append(("gate passed: " if gate.get("passed") else "gate failed: ")
                     + "; ".join(gate.get("reasons", [])))
    reg = steps.get("register", {})
    if reg.get("registered"):
        parts.append(f"registered v{reg.get('version')} ({reg.get('approval')})")
    rows.append(_Row(run.finished_at, "run", "; ".join(parts)))
    return rows


def _event_row(e: EventRecord) -> _Row:
    p, d = e.payload, e.decision
    if e.kind == EventKind.DATA_ARRIVED:
        detail = f"{p.get('new', '?')} new file(s) from the {p.get('source', '?')} source"
    elif e.kind == EventKind.DRIFT_DETECTED:
        detail = (f"v{p.get('version')}: {', '.join(p.get('reasons', []))} over "
                  f"{p.get('n_current')} images")
    elif e.kind == EventKind.MODEL_DEPLOYED:
        was = f" (was v{p['previous']})" if p.get("previous") else ""
        detail = f"v{p.get('version')} is the live champion{was}: {p.get('action')}"
    elif e.kind == EventKind.MODEL_APPROVED:
        detail = f"v{p.get('version')} approved by {p.get('actor')}"
    else:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(p.items())) or "-"
    group: tuple[Any, ...] | None = None
    if e.kind in TRIGGER_EVENTS and d is not None:
        detail += f" -> {decided(d)}"
        if e.kind == EventKind.DRIFT_DETECTED:
            group = (e.kind, p.get("version"), d.decision, d.reason)
    return _Row(e.created_at, e.kind, detail, group)


def decided(d: EventDecision) -> str:
    """A decision in words; "started run X: why" says it once, not "started: started ..."."""
    return d.reason if d.reason.startswith(d.decision) else f"{d.decision}: {d.reason}"


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)
