"""`medops --help` as a new user reads it in an 80-column terminal: one line per command, no
type beside flags."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from medops.cli.main import app

WIDTH = 80


def _help(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TERMINAL_WIDTH")}
    done = subprocess.run([sys.executable, "-m", "medops.cli", *args, "--help"],
                          capture_output=True, text=True, timeout=120,
                          env={**env, "COLUMNS": str(WIDTH), "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def _summary(command: Any) -> str:
    """The first paragraph of a command's help: what the command list shows."""
    text = command.short_help or inspect.cleandoc(command.help or "").partition("\f")[0]
    return text.split("\n\n")[0].strip()


def _groups(group: TyperGroup, path: tuple[str, ...] = ()
            ) -> Iterator[tuple[tuple[str, ...], TyperGroup]]:
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, TyperGroup):
            yield from _groups(command, (*path, name))


def _rows(help_text: str) -> dict[str, list[str]]:
    """Each command of the help's Commands panel and the lines of its description."""
    rows: dict[str, list[str]] = {}
    inside, current = False, ""
    for line in help_text.splitlines():
        if "Commands" in line and line.lstrip().startswith("╭"):
            inside = True
            continue
        if not inside:
            continue
        if line.lstrip().startswith("╰"):
            break
        cells = line.strip().strip("│").rstrip().split(None, 1)
        if line.strip("│ ")[:1] and not line.startswith("│  ") and cells:
            current = cells[0]
            rows[current] = [cells[1] if len(cells) > 1 else ""]
        else:
            rows[current].append(line.strip().strip("│").strip())
    return rows


def test_top_level_help_has_one_line_per_command_and_no_flag_types() -> None:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    out = _help()
    assert "<bool>" not in out
    assert all(len(line) <= WIDTH for line in out.splitlines()), out
    rows = _rows(out)
    assert set(rows) == set(root.commands), out
    for name, command in root.commands.items():
        summary = _summary(command)
        # the whole summary on the command's own line: neither wrapped nor cut
        assert rows[name] == [summary], (name, rows[name], summary)


def _paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    return [(*path, name) for path, group in _groups(root) for name in group.commands]


@pytest.mark.parametrize("path", _paths(), ids=" ".join)
def test_no_command_shows_a_type_beside_its_flags(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(WIDTH)})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output and "<bool>" not in result.output, result.output


def test_every_summary_is_one_sentence_on_one_line() -> None:
    """Typer keeps the line breaks of a summary, so a summary written over two lines of a
    docstring shows cut mid-sentence in the command list."""
    root = typer.main.get_command(app)
    assert isinstance(root, TyperGroup)
    for path, group in _groups(root):
        for name, command in group.commands.items():
            summary = _summary(command)
            where = " ".join(("medops", *path, name))
            assert summary, f"{where} has no help"
            assert "\n" not in summary, f"{where}: the summary is cut: {summary!r}"
            assert summary.endswith((".", ")")), f"{where}: not a sentence: {summary!r}"


def test_options_that_take_a_value_keep_their_type() -> None:
    out = _help("run")
    assert "<list[str]>" in out and "<path>" in out  # --set, --project
    assert "<bool>" not in out
