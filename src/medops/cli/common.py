"""What every command module shares: error handling, the common options, loading the project."""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.markup import escape

from medops.cli.render import err_console
from medops.config import parse_override
from medops.errors import MedopsError, exit_code_for

if TYPE_CHECKING:
    from medops.pipeline import PipelineRunner, Reporter

F = TypeVar("F", bound=Callable[..., Any])
# A second Ctrl-C this long after the first forces the stop; sooner, it is the same keypress
# reaching the process group again (or the agent relaying it), and is ignored.
FORCE_AFTER_SECONDS = 1.0

ProjectOpt = typer.Option(None, "--project", "-C", help="Project folder (default: search upwards).")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def _hide_flag_types() -> None:
    """Leave the type column of the help empty for flags (--json, --help, --loop/--no-loop).

    Typer 0.29 prints a type beside every option of the rich help, ``<bool>`` beside flags,
    which take no value; typer 0.28 left it out for them. Options that take a value keep
    their type."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "hides_flag_types", False):
        return  # an older typer (it hides them itself), or done already

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag and not self.count else shown(self, ctx)

    display_type_rich.hides_flag_types = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_hide_flag_types()


def handle_errors(fn: F) -> F:
    """MedopsError -> a red one-line message and a meaningful exit code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedopsError as exc:
            err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(exit_code_for(exc)) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/yellow]: `medops runs resume ID` continues")
            ignore_stop_signals()
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def ignore_stop_signals() -> None:
    """Ignore SIGINT and SIGTERM: a process leaving with status 130 keeps that status.

    The stop was handled and the handlers of the run restored, so a late SIGINT (the rest of a
    process group's Ctrl-C) or SIGTERM would raise again or kill the process while it unwinds,
    and Python would then exit by SIGINT's status instead of 130. The process is leaving, so
    both are ignored from here on."""
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


def load_project(path: Path | None, sets: list[str] | None = None) -> Any:
    from medops.project import Project

    overrides = dict(parse_override(s) for s in sets or [])
    return Project.load(path, overrides)


@contextmanager
def interruptible_runner(project: Any,
                         reporter: Reporter | None = None) -> Iterator[PipelineRunner]:
    """A PipelineRunner whose run Ctrl-C or SIGTERM interrupts (resumable, never retried);
    a second one, a moment later, forces the stop where a long step did not let the first in."""
    from medops.pipeline import Interrupt, PipelineRunner

    with Interrupt(force_after=FORCE_AFTER_SECONDS).on_signals() as stop:
        yield PipelineRunner(project, reporter, stop)
