"""Drawing runs and tables in the terminal (rich), and JSON for scripts."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from medops.storage import RunRecord

console = Console(stderr=False)
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _when(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M:%S") if dt else "-"


def _summary(step: str, out: dict[str, Any]) -> str:
    keys = {
        "ingest": ("new", "catalog"), "validate": ("ok", "quarantined", "class_counts"),
        "split": ("dataset_version", "counts"), "preprocess": ("computed", "cached"),
        "train": ("best_epoch", "best_val_auc", "epochs_run", "resumed_from_epoch"),
        "gate": ("passed", "reasons"),
        "register": ("registered", "name", "version", "alias", "approval"),
    }.get(step, ())
    if step == "evaluate":
        m = out.get("metrics", {})
        return ", ".join(f"{k}={m[k]:.4f}" for k in ("test_auc", "test_accuracy",
                                                     "test_balanced_accuracy") if k in m)
    return ", ".join(f"{k}={_short(out[k])}" for k in keys if k in out and out[k] is not None)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def _took(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def run_table(runs: list[RunRecord]) -> Table:
    # Light rules and short cells so that a run fits one line of an 80-column terminal.
    table = Table(title="Runs", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True)
    # The id stays whole: it is what `runs show ID` takes (a cut one matched several runs).
    table.add_column("id", no_wrap=True, min_width=max((len(r.id) for r in runs), default=2))
    for col in ("status", "trigger", "started", "took", "last step"):
        table.add_column(col, no_wrap=col in ("status", "started", "took"))
    for r in runs:
        took = _took((r.finished_at - r.started_at).total_seconds()) if r.finished_at else "-"
        last = next((s.name for s in reversed(r.steps) if s.status.value != "pending"), "-")
        started = r.started_at.strftime("%m-%d %H:%M")
        table.add_row(r.id, _status(r.status.value), r.trigger, started, took, last)
    return table


def run_detail(run: RunRecord) -> Table:
    table = Table(title=f"{run.id} — {run.status.value} ({run.trigger})")
    for col in ("step", "status", "attempts", "seconds", "outputs / error"):
        table.add_column(col, overflow="fold")
    for s in run.steps:
        detail = (s.error or "").splitlines()[0] if s.error and s.status.value == "failed" \
            else _summary(s.name, s.outputs)
        secs = f"{s.seconds:.1f}" if s.seconds is not None else "-"
        table.add_row(s.name, _status(s.status.value), str(s.attempts), secs, detail)
    return table


def run_to_dict(run: RunRecord) -> dict[str, Any]:
    return {"id": run.id, "status": run.status.value, "trigger": run.trigger,
            "started_at": run.started_at, "finished_at": run.finished_at, "error": run.error,
            "mlflow_run_id": run.mlflow_run_id,
            "steps": [{"name": s.name, "status": s.status.value, "attempts": s.attempts,
                       "started_at": s.started_at, "finished_at": s.finished_at,
                       "seconds": s.seconds, "error": s.error, "outputs": s.outputs}
                      for s in run.steps]}


def _status(value: str) -> str:
    color = {"succeeded": "green", "failed": "red", "running": "yellow",
             "interrupted": "magenta"}.get(value, "dim")
    return f"[{color}]{value}[/{color}]"


class RichReporter:
    """Live progress of a run: one line per step, a bar for long steps."""

    def __init__(self) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total}"),
                                  TimeElapsedColumn(), console=console, transient=True)
        self._task: TaskID | None = None

    def __enter__(self) -> RichReporter:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def step_started(self, step: str, attempt: int) -> None:
        again = f" (attempt {attempt})" if attempt > 1 else ""
        self._task = self._progress.add_task(f"[bold]{step}[/bold]{again}", total=None)

    def _done(self) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None

    def step_finished(self, step: str, outputs: dict[str, Any], seconds: float) -> None:
        self._done()
        console.print(f"[green]✓[/green] {step:<10} {seconds:6.1f}s  {_summary(step, outputs)}")

    def step_failed(self, step: str, error: str, attempt: int, will_retry: bool) -> None:
        self._done()
        tail = " — retrying" if will_retry else ""
        # an error's text is not markup: "[...]" in it (a torch message) would break printing
        console.print(f"[red]✗[/red] {step:<10} attempt {attempt}: {escape(error)}{tail}")

    def progress(self, step: str, done: int, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=done, total=total or None)

    def message(self, step: str, text: str) -> None:
        self._progress.console.print(f"  [dim]{step}:[/dim] {text}")
