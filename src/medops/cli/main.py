"""The `medops` command: parse, build the project, call the API, render."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from medops.cli.render import (
    RichReporter,
    console,
    err_console,
    print_json,
    run_detail,
    run_table,
    run_to_dict,
)
from medops.config import Step, parse_override
from medops.errors import MedopsError, exit_code_for

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(help="MLOps for medical image classifiers.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Images in the project: import, list, validate.", no_args_is_help=True)
runs_app = typer.Typer(help="Pipeline runs: list, show, resume.", no_args_is_help=True)
models_app = typer.Typer(help="Registered model versions.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")

ProjectOpt = typer.Option(None, "--project", "-C", help="Project folder (default: search upwards).")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def handle_errors(fn: F) -> F:
    """MedopsError -> a red one-line message and a meaningful exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedopsError as exc:
            err_console.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(exit_code_for(exc)) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]: `medops runs resume ID` continues")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _project(path: Path | None, sets: list[str] | None = None) -> Any:
    from medops.project import Project

    overrides = dict(parse_override(s) for s in sets or [])
    return Project.load(path, overrides)


@app.command()
@handle_errors
def init(directory: Path = typer.Argument(Path(), help="Project folder."),
         name: str | None = typer.Option(None, help="Project name (default: folder name)."),
         force: bool = typer.Option(False, help="Overwrite an existing medops.yaml.")) -> None:
    """Scaffold a project: a commented medops.yaml and data/raw/.

    Example: medops init chest-xray
    """
    from medops.project import Project

    path = Project.init(directory, name, force)
    console.print(f"created {path}\nnext: put images in {directory / 'data' / 'raw'}/<label>/ "
                  "(or `medops data import FILE.npz`), then `medops run`")


@app.command()
@handle_errors
def run(project: Path | None = ProjectOpt,
        until: Step | None = typer.Option(None, help="Stop after this step."),
        set_: list[str] | None = typer.Option(None, "--set", help="Override: KEY=VALUE."),
        json_out: bool = JsonOpt) -> None:
    """Run the pipeline now (a manual trigger).

    Example: medops run --set train.epochs=5
    """
    from medops.pipeline import PipelineRunner

    proj = _project(project, set_)
    if json_out:
        record = PipelineRunner(proj).run("manual", until)
        print_json(run_to_dict(record))
        return
    with RichReporter() as reporter:
        record = PipelineRunner(proj, reporter).run("manual", until)
    console.print(run_detail(record))


@data_app.command("import")
@handle_errors
def data_import(source: Path = typer.Argument(..., help="A MedMNIST .npz file or a folder."),
                project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Add images to the project's catalog.

    Example: medops data import breastmnist_28.npz
    """
    from medops.project import import_source

    result = import_source(_project(project), source)
    if json_out:
        print_json(result)
    else:
        console.print(f"{result['source']}: {result['items']} items, {result['new']} new, "
                      f"{result['changed']} changed, {result['quarantined']} quarantined")


@data_app.command("ls")
@handle_errors
def data_ls(project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Items per source and status, and what is quarantined."""
    from rich.table import Table

    from medops.storage import ItemStatus

    proj = _project(project)
    counts = proj.state.item_counts()
    quarantined = [{"uri": i.uri, "reason": i.reason}
                   for i in proj.state.items(ItemStatus.QUARANTINED)]
    if json_out:
        print_json({"sources": counts, "quarantined": quarantined})
        return
    table = Table(title="Items")
    for col in ("source", "ok", "pending", "quarantined"):
        table.add_column(col)
    for source, by_status in counts.items():
        table.add_row(source, *(str(by_status.get(s, 0)) for s in ("ok", "pending",
                                                                    "quarantined")))
    console.print(table)
    for q in quarantined:
        console.print(f"[yellow]quarantined[/yellow] {q['uri']}: {q['reason']}", highlight=False)


@data_app.command("validate")
@handle_errors
def data_validate(project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Ingest and validate now (runs the pipeline up to `validate`)."""
    from medops.pipeline import PipelineRunner

    proj = _project(project)
    record = PipelineRunner(proj).run("data validate", Step.VALIDATE)
    if json_out:
        print_json(run_to_dict(record))
    else:
        console.print(run_detail(record))


@runs_app.command("ls")
@handle_errors
def runs_ls(project: Path | None = ProjectOpt, limit: int = 20,
            json_out: bool = JsonOpt) -> None:
    """Recent runs, newest first."""
    proj = _project(project)
    proj.state.mark_dead_runs_interrupted()
    runs = proj.state.list_runs(limit)
    if json_out:
        print_json([run_to_dict(r) for r in runs])
    else:
        console.print(run_table(runs))


@runs_app.command("show")
@handle_errors
def runs_show(run_id: str, project: Path | None = ProjectOpt,
              json_out: bool = JsonOpt) -> None:
    """One run's steps, timings, outputs and errors (an id prefix is enough)."""
    proj = _project(project)
    proj.state.mark_dead_runs_interrupted()
    record = proj.state.get_run(run_id)
    if json_out:
        print_json(run_to_dict(record))
    else:
        console.print(run_detail(record))
        if record.error:
            console.print(f"[red]{record.error}[/red]", highlight=False)


@runs_app.command("resume")
@handle_errors
def runs_resume(run_id: str, project: Path | None = ProjectOpt) -> None:
    """Continue an interrupted or failed run from its first unfinished step."""
    from medops.pipeline import PipelineRunner

    proj = _project(project)
    with RichReporter() as reporter:
        record = PipelineRunner(proj, reporter).resume(run_id)
    console.print(run_detail(record))


@models_app.command("ls")
@handle_errors
def models_ls(project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Versions of the project's registered model, with tags and aliases."""
    from rich.table import Table

    proj = _project(project)
    versions = proj.registry.versions()
    if json_out:
        print_json([v.to_dict() for v in versions])
        return
    table = Table(title=proj.config.model_name)
    for col in ("version", "aliases", "test_auc", "gate", "approval", "dataset", "created"):
        table.add_column(col)
    for v in versions:
        t = v.tags
        table.add_row(v.version, ", ".join(v.aliases), t.get("test_auc", "-"),
                      t.get("gate", "-"), t.get("approval", "-"), t.get("dataset_version", "-"),
                      v.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@app.command()
@handle_errors
def demo(data: Path | None = typer.Option(None, help="Run on a MedMNIST .npz instead."),
         directory: Path | None = typer.Option(None, "--dir",
                                                  help="Project folder (default: a temp one)."),
         epochs: int | None = typer.Option(None, help="Override train.epochs.")) -> None:
    """The whole training loop, offline, on synthetic DICOM (or a MedMNIST file).

    Example: medops demo --data ../shared/data/medmnist/breastmnist_28.npz
    """
    from medops.cli.demo import run_demo

    run_demo(data=data, directory=directory, epochs=epochs)


def main() -> None:
    # MLflow announces its schema migrations at INFO and resets its logger's level when it is
    # imported, so the level is set through the variable MLflow reads; users may override it.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    app()
