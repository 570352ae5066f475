"""`medops agent` (the retraining loop, foreground), `medops agent request` and `medops events`."""

from __future__ import annotations

import getpass
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from medops.cli.common import JsonOpt, ProjectOpt, handle_errors, load_project
from medops.cli.render import console, print_json
from medops.config.enums import EventKind

if TYPE_CHECKING:  # the agent's modules load when a command needs them
    from medops.agent import MonitorJob
    from medops.project import Project

agent_app = typer.Typer()  # help: the callback's docstring
events_app = typer.Typer(help="Events: what arrived, what was decided and why.",
                         no_args_is_help=True)


@agent_app.callback(invoke_without_command=True)
@handle_errors
def agent(ctx: typer.Context, project: Path | None = ProjectOpt,
          set_: list[str] | None = typer.Option(None, "--set", help="Override: KEY=VALUE."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C.

    It watches the data folder, polls sources, fires schedules, applies the retraining policy,
    runs pipelines and sends notifications.

    Example: medops agent -C chest-xray
    """
    if ctx.invoked_subcommand is not None:
        return
    from medops.agent import Agent

    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("watchdog", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    proj = load_project(project, set_)
    Agent(proj, monitor=monitor_job(proj), log_level=level).run()


def monitor_job(proj: Project) -> MonitorJob:
    """The agent's check of the live model, on ``monitor.schedule``."""
    from medops.agent.schedule import Schedule

    def check(slot: datetime) -> None:
        # imported on first use: the monitor pulls in sklearn and matplotlib
        from medops.monitor.run import run_monitor

        result = run_monitor(proj, now=slot)  # stores drift.detected itself, keyed by window
        logging.getLogger("medops.agent").info("monitor at %s: %s", slot.isoformat(),
                                               result.status)

    return Schedule(cron=proj.config.monitor.schedule), check


@agent_app.command("request")
@handle_errors
def request(project: Path | None = ProjectOpt,
            reason: str | None = typer.Option(None, help="Why (kept with the event)."),
            key: str | None = typer.Option(None, "--idempotency-key",
                                           help="A request with a key used before starts "
                                                "nothing."),
            json_out: bool = JsonOpt) -> None:
    """Ask the agent for a pipeline run (a `run.requested` event).

    Example: medops agent request --reason "new labels from the radiologists"
    """
    from medops.agent import request_run

    event = request_run(load_project(project).state, reason, _user(), key)
    if json_out:
        print_json({"event_id": event.id if event else None, "duplicate": event is None})
    elif event is None:
        console.print("a request with this idempotency key exists already: nothing new")
    else:
        console.print(f"requested (event {event.id}); the agent decides: `medops events ls`")


@events_app.command("ls")
@handle_errors
def events_ls(project: Path | None = ProjectOpt,
              kind: EventKind | None = typer.Option(None, help="Only events of this kind."),
              limit: int = 50, json_out: bool = JsonOpt) -> None:
    """Events, newest first, with the agent's decision and its reason."""
    from rich.table import Table

    events = load_project(project).state.event_log(kind, limit)
    if json_out:
        print_json([e.to_dict() for e in events])
        return
    table = Table(title="Events")
    for col in ("id", "at", "kind", "status", "decision", "reason", "run"):
        table.add_column(col)
    for e in events:
        d = e.decision
        table.add_row(str(e.id), e.created_at.strftime("%Y-%m-%d %H:%M:%S"), e.kind,
                      d.status.value if d else "new", d.decision if d else "-",
                      d.reason if d else "-", (d.run_id or "-") if d else "-")
    console.print(table)



def _user() -> str | None:
    try:
        return getpass.getuser()
    except Exception:  # no user name in a bare container
        return None
