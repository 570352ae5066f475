"""`medops data ...`: import images, list what is there, validate it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from medops.cli.common import JsonOpt, ProjectOpt, handle_errors, load_project
from medops.cli.render import console, print_json, run_detail, run_to_dict

data_app = typer.Typer(help="Images in the project: import, list, validate.", no_args_is_help=True)


@data_app.command("import")
@handle_errors
def data_import(
    source: str | None = typer.Argument(
        None, help="A MedMNIST .npz file, a folder, s3://BUCKET/PREFIX or a DICOMweb URL."),
    name: str | None = typer.Option(None, "--source", "-s",
                                    help="A source of data.sources in medops.yaml."),
    event: Path | None = typer.Option(
        None, "--event", help="HealthImaging EventBridge events (JSON) naming image sets."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override: KEY=VALUE."),
    project: Path | None = ProjectOpt, json_out: bool = JsonOpt,
) -> None:
    """Add images to the project's catalog; network sources continue from their cursor.

    Examples: medops data import breastmnist_28.npz ·
    medops data import s3://scans/chest/ · medops data import --source pacs ·
    medops data import healthimaging://DATASTORE/IMAGESET · medops data import --source ahi
    --event event.json · medops data import scans/ --set data.frames=each
    """
    from medops.project import import_source

    if source is not None and name is not None:
        raise typer.BadParameter("give either SOURCE or --source NAME, not both")
    result = import_source(load_project(project, set_), source, name, event)
    if json_out:
        print_json(result)
        return
    line = (f"{result['source']}: {result['items']} items, {result['new']} new, "
            f"{result['changed']} changed, {result['quarantined']} quarantined")
    skipped = result.get("skipped") or {}
    if skipped:
        line += f", {sum(skipped.values())} left out by data.select"
    console.print(line, highlight=False)
    for reason, count in sorted(skipped.items(), key=lambda kv: -kv[1]):
        console.print(f"  left out {count}: {reason}", highlight=False)


@data_app.command("ls")
@handle_errors
def data_ls(project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Items per source and status, each polled source's cursor, and what is quarantined."""
    from rich.table import Table

    proj = load_project(project)
    listing = data_listing(proj)
    if json_out:
        print_json(listing)
        return
    table = Table(title="Items")
    for col in ("source", "ok", "pending", "quarantined", "cursor", "polled"):
        table.add_column(col)
    for source in sorted(set(listing["sources"]) | set(listing["cursors"])):
        counts = listing["sources"].get(source, {})
        cursor = listing["cursors"].get(source, {})
        table.add_row(source, *(str(counts.get(s, 0)) for s in ("ok", "pending", "quarantined")),
                      _short(cursor.get("cursor")), cursor.get("updated_at") or "-")
    console.print(table)
    for q in listing["quarantined"]:
        console.print(f"[yellow]quarantined[/yellow] {q['uri']}: {q['reason']}", highlight=False)


def data_listing(proj: Any) -> dict[str, Any]:
    """{sources: {name: {status: count}}, cursors: {name: {cursor, updated_at}},
    quarantined: [{source, uri, reason}]}."""
    from medops.storage import ItemStatus

    cursors = {name: {"cursor": cursor, "updated_at": at.isoformat(timespec="seconds")}
               for name, (cursor, at) in proj.state.cursors().items()}
    quarantined = [{"source": i.source, "uri": i.uri, "reason": i.reason}
                   for i in proj.state.items(ItemStatus.QUARANTINED)]
    return {"sources": proj.state.item_counts(), "cursors": cursors, "quarantined": quarantined}


def _short(cursor: str | None, width: int = 40) -> str:
    if cursor is None:
        return "-"
    return cursor if len(cursor) <= width else cursor[: width - 1] + "…"


@data_app.command("validate")
@handle_errors
def data_validate(project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Ingest and validate now (runs the pipeline up to `validate`)."""
    from medops.config import Step
    from medops.pipeline import PipelineRunner

    proj = load_project(project)
    record = PipelineRunner(proj).run("data validate", Step.VALIDATE)
    if json_out:
        print_json(run_to_dict(record))
    else:
        console.print(run_detail(record))
