"""`medops monitor`: compare the live model's recent traffic with its training baseline."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medops.cli.common import JsonOpt, ProjectOpt, handle_errors, load_project
from medops.cli.render import console, print_json

if TYPE_CHECKING:
    from medops.monitor.quality import FindingQuality


@handle_errors
def monitor(window: str | None = typer.Option(None, "--window",
                                              help="Capture window to check, e.g. 1h, 24h, "
                                                   "7d (default: monitor.window)."),
            version: str | None = typer.Option(None, "--version",
                                               help="Model version (default: the champion)."),
            project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Check the live model's drift and quality now.

    Stores the report and, on drift, the event drift.detected (the agent runs this on
    monitor.schedule).

    Example: medops monitor --window 24h
    """
    from medops.monitor.run import run_monitor

    proj = load_project(project)
    result = run_monitor(proj, window=window, version=version)
    if json_out:
        print_json(result.to_dict())
        return
    colour = {"drift": "red", "ok": "green"}.get(result.status.value, "yellow")
    console.print(f"[{colour}]{result.status.value}[/{colour}] {result.message}",
                  highlight=False)
    if result.drift is not None:
        for t in result.drift.drifted:
            console.print(f"  drift: {t.name} p={t.p_value:.3g} (threshold {t.threshold:.3g})",
                          highlight=False)
    if result.quality is not None:
        for f in result.quality.findings:
            console.print(f"  {_finding_line(f)}", highlight=False)
        for c in result.quality.degraded:
            console.print(f"  quality: {c.name} {c.live:.3f} vs test {c.reference:.3f}",
                          highlight=False)
    if result.report is not None:
        console.print(f"report: {result.report}", highlight=False)
    if result.event_id is not None:
        console.print(f"event drift.detected #{result.event_id} stored", highlight=False)


def _finding_line(f: FindingQuality) -> str:
    """A multi-label model's live quality on one finding, from the feedback labels."""
    def num(v: float | None) -> str:
        return "-" if v is None or v != v else f"{v:.3f}"

    return (f"finding {f.name}: AUC {num(f.auc)} (test {num(f.reference_auc)}), F1 {num(f.f1)}"
            f" at threshold {f.threshold:.3g}, {f.positives} of {f.n} labelled positive")
