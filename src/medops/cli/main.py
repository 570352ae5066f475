"""The `medops` command: parse, build the project, call the API, render."""

from __future__ import annotations

import contextlib
import getpass
import os
from pathlib import Path

import typer

from medops.cli.agent import agent_app, events_app
from medops.cli.agent import request as agent_request
from medops.cli.common import (
    JsonOpt,
    ProjectOpt,
    handle_errors,
    ignore_stop_signals,
    interruptible_runner,
)
from medops.cli.common import load_project as _project
from medops.cli.data import data_app
from medops.cli.export import export_app, init_ci
from medops.cli.models import models_app
from medops.cli.monitor import monitor
from medops.cli.predict import batch_predict, predict
from medops.cli.receive import receive
from medops.cli.render import (
    RichReporter,
    console,
    print_json,
    run_detail,
    run_table,
    run_to_dict,
)
from medops.cli.serve import feedback_app, serve
from medops.cli.server import server_app
from medops.config import Step

app = typer.Typer(help="MLOps for medical image classifiers.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
runs_app = typer.Typer(help="Pipeline runs: list, show, resume, discard.", no_args_is_help=True)


def _print_version(value: bool) -> None:
    if value:
        from medops import __version__

        print(f"medops {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", is_eager=True,
                                       callback=_print_version,
                                       help="Print the version and exit.")) -> None:
    """MLOps for medical image classifiers."""


app.add_typer(data_app, name="data")
app.add_typer(runs_app, name="runs")
app.add_typer(models_app, name="models")
app.command("predict")(predict)
app.command("batch-predict")(batch_predict)
app.command("receive")(receive)
app.command("serve")(serve)
app.command("monitor")(monitor)
app.add_typer(feedback_app, name="feedback")
app.add_typer(agent_app, name="agent")
app.add_typer(events_app, name="events")
app.add_typer(server_app, name="server")
app.add_typer(export_app, name="export")


@app.command()
@handle_errors
def init(directory: Path = typer.Argument(Path(), help="Project folder."),
         name: str | None = typer.Option(None, help="Project name (default: folder name)."),
         force: bool = typer.Option(False, help="Overwrite an existing medops.yaml."),
         ci: str | None = typer.Option(None, "--ci", help="Add CI/CD: github (a GitHub Actions "
                                       "workflow); an existing medops.yaml is kept.")) -> None:
    """Scaffold a project: a commented medops.yaml and data/raw/.

    Example: medops init chest-xray · medops init --ci github (in a project)
    """
    from medops.project import Project

    if ci is None or not (directory / "medops.yaml").is_file():
        path = Project.init(directory, name, force)
        console.print(f"created {path}\nnext: put images in {directory / 'data' / 'raw'}/"
                      "<label>/ (or `medops data import FILE.npz`), then `medops run`")
    if ci is not None:
        init_ci(directory, ci, force)


@app.command()
@handle_errors
def run(project: Path | None = ProjectOpt,
        until: Step | None = typer.Option(None, help="Stop after this step."),
        only: Step | None = typer.Option(
            None, "--only", help="Run just this step of the run --run-id (one task of an "
            "orchestrator such as Airflow: one attempt, the orchestrator retries)."),
        run_id: str | None = typer.Option(
            None, "--run-id", help="With --only: the run to create (first step) or continue."),
        trigger: str = typer.Option("manual", help="What started the run, as recorded (e.g. "
                                    "airflow)."),
        set_: list[str] | None = typer.Option(None, "--set", help="Override: KEY=VALUE."),
        via_agent: bool = typer.Option(False, "--via-agent",
                                       help="Ask the running agent instead (run.requested)."),
        json_out: bool = JsonOpt) -> None:
    """Run the pipeline now, or one step of a run (--only).

    Example: medops run --set train.epochs=5 · medops run --only train --run-id nightly-42
    """
    if (only is None) != (run_id is None):
        raise typer.BadParameter("--only and --run-id go together: --only STEP --run-id ID",
                                 param_hint="--only / --run-id")
    if only is not None and (until is not None or via_agent):
        raise typer.BadParameter("--only runs one step: leave out --until and --via-agent",
                                 param_hint="--only")
    if via_agent:
        agent_request(project=project, reason="medops run --via-agent", key=None,
                      json_out=json_out)
        return
    proj = _project(project, set_)
    with contextlib.ExitStack() as stack:
        reporter = None if json_out else stack.enter_context(RichReporter())
        runner = stack.enter_context(interruptible_runner(proj, reporter))
        if only is not None and run_id is not None:
            record = runner.run_step(run_id, only, trigger)
        else:
            record = runner.run(trigger, until)
    if json_out:
        print_json(run_to_dict(record))
    else:
        console.print(run_detail(record))


@runs_app.command("ls")
@handle_errors
def runs_ls(project: Path | None = ProjectOpt, limit: int = 20,
            json_out: bool = JsonOpt) -> None:
    """Recent runs, newest first."""
    from medops.api import Session

    runs = [r.record for r in Session(_project(project)).runs(limit)]
    if json_out:
        print_json([run_to_dict(r) for r in runs])
    else:
        console.print(run_table(runs))


@runs_app.command("show")
@handle_errors
def runs_show(run_id: str, project: Path | None = ProjectOpt,
              json_out: bool = JsonOpt) -> None:
    """One run's steps, timings, outputs and errors (an id prefix is enough)."""
    from medops.api import Session

    record = Session(_project(project)).get_run(run_id).record
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
    proj = _project(project)
    with RichReporter() as reporter, interruptible_runner(proj, reporter) as runner:
        record = runner.resume(run_id)
    console.print(run_detail(record))


@runs_app.command("discard")
@handle_errors
def runs_discard(run_id: str,
                 by: str | None = typer.Option(None, "--by", help="Who discards it, for the "
                                               "audit log (default: the login name)."),
                 project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Give up an interrupted or failed run: it can no longer be resumed.

    Its unfinished training checkpoint is deleted (its record and reports stay).

    Example: medops runs discard run-20261201-033738
    """
    from medops.pipeline import discard_run

    done = discard_run(_project(project), run_id, by or _login())
    if json_out:
        print_json({"run": run_to_dict(done.run), "checkpoint": str(done.checkpoint)
                    if done.checkpoint else None, "checkpoint_removed": done.removed,
                    "checkpoint_kept_because": done.kept_because})
        return
    console.print(f"run {done.run.id} discarded", highlight=False)
    if done.removed:
        console.print(f"removed its unfinished training checkpoint {done.checkpoint}",
                      highlight=False)
    elif done.kept_because:
        console.print(f"kept its training checkpoint {done.checkpoint}: {done.kept_because}",
                      highlight=False)


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment nor in the password database
        return "unknown"


@app.command()
@handle_errors
def demo(data: Path | None = typer.Option(None, help="Train on a MedMNIST .npz instead (no "
                                                      "loop: it needs image files)."),
         directory: Path | None = typer.Option(None, "--dir",
                                                  help="Project folder (default: a temp one)."),
         epochs: int | None = typer.Option(None, min=1, help="Override train.epochs."),
         loop: bool = typer.Option(True, "--loop/--no-loop",
                                   help="After the first model: serve it, drift, retrain, swap "
                                        "(--no-loop: stop after the first model)."),
         force: bool = typer.Option(False, help="Overwrite the medops.yaml a --dir already "
                                                "holds.")) -> None:
    """The whole lifecycle, offline, on synthetic DICOM.

    Train, gate and register a model, serve it, let a new detector's images drift, and watch
    the agent retrain and the server swap to the new version; a timeline ends it.

    Example: medops demo --no-loop --data ../shared/data/medmnist/breastmnist_28.npz
    """
    from medops.cli.demo import run_demo

    run_demo(data=data, directory=directory, epochs=epochs, loop=loop, force=force)


def main() -> None:
    # MLflow announces its schema migrations at INFO and resets its logger's level when it is
    # imported, so the level is set through the variable MLflow reads; users may override it.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's download progress bars are noise in the logs of agents, servers and runs
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
            # a rank of a torchrun launch: rank 0 runs the command, the others train with it
            # (docs/distributed.md)
            from rich.markup import escape

            from medops.cli.render import err_console
            from medops.errors import MedopsError, exit_code_for
            from medops.train.torchrun import run_under_torchrun

            try:
                run_under_torchrun(app)
            except MedopsError as exc:  # joining the launch, or another rank's training
                err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
                raise SystemExit(exit_code_for(exc)) from None
        else:
            app()
    except KeyboardInterrupt:
        # a stop is exit status 130 however late it lands
        ignore_stop_signals()
        raise SystemExit(130) from None
