"""`medops models ...`: registered versions and their sign-off (approve, reject, rollback)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from medops.cli.common import JsonOpt, ProjectOpt, handle_errors, load_project
from medops.cli.render import console, print_json

if TYPE_CHECKING:
    from medops.registry import ModelLifecycle
    from medops.server.client import ServerClient
    from medops.storage import DeploymentRecord

models_app = typer.Typer(help="Registered model versions and their sign-off.",
                         no_args_is_help=True)

ByOpt = typer.Option(None, "--by", help="Who signs off (recorded in the audit log); not with "
                                          "server.url: the server records who is logged in.")
NoteOpt = typer.Option(..., "--note", help="Why (recorded in the audit log).")


def _lifecycle(project: Path | None, name: str | None) -> ModelLifecycle:
    from medops.api import Session

    return Session(load_project(project)).lifecycle(name)


def _remote(project: Path | None, by: str | None) -> ServerClient | None:
    """The team server's client when medops.yaml sets server.url; None: act locally."""
    proj = load_project(project)
    if proj.config.server.url is None:
        return None
    from medops.errors import ConfigError
    from medops.server.client import ServerClient

    if by is not None:
        raise ConfigError(f"--by {by!r}: server.url is set, so the sign-off goes to "
                          f"{proj.config.server.url}, which records the logged-in user (or "
                          "token) as who signed off; leave out --by")
    return ServerClient.from_config(proj.config.server, proj.root)


def _deployed_remote(d: dict[str, Any], json_out: bool, verb: str) -> None:
    if json_out:
        print_json(d)
    else:
        console.print(f"{d['model']} v{d['version']} {verb}: live as champion since "
                      f"{d['live_from']} ({d['action']} by {d['actor']})", highlight=False)


def _when(dt: datetime | None) -> str:
    return dt.isoformat(timespec="seconds") if dt else "-"


def _deployed(d: DeploymentRecord, json_out: bool, verb: str) -> None:
    from medops.registry.lifecycle import deployment_to_dict

    if json_out:
        print_json(deployment_to_dict(d))
    else:
        console.print(f"{d.model} v{d.version} {verb}: live as champion since "
                      f"{_when(d.live_from)} ({d.action} by {d.actor})", highlight=False)


@models_app.command("ls")
@handle_errors
def models_ls(name: str | None = typer.Argument(None, help="Model (default: the project's)."),
              project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Each version with its metrics, gate, approval state and whether it is live.

    Example: medops models ls --json
    """
    from rich.table import Table

    lifecycle = _lifecycle(project, name)
    versions = lifecycle.versions()
    if json_out:
        print_json([v.to_dict() for v in versions])
        return
    table = Table(title=lifecycle.name)
    for col in ("version", "live", "approval", "test_auc", "test_accuracy", "aliases",
                "created"):
        table.add_column(col, no_wrap=col != "aliases")
    for v in versions:
        m = v.metrics
        table.add_row(
            v.info.version, "[green]live[/green]" if v.live else "", v.approval,
            *(f"{m[k]:.4f}" if k in m else "-" for k in ("test_auc", "test_accuracy")),
            ", ".join(v.info.aliases), v.info.created_at.strftime("%Y-%m-%d %H:%M"))
    console.print(table)


@models_app.command("approve")
@handle_errors
def models_approve(name: str = typer.Argument(..., help="Registered model name."),
                   version: str = typer.Argument(..., help="Version to make live."),
                   by: str | None = ByOpt, note: str = NoteOpt,
                   project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Approve a version: it becomes the live champion; who, when and why are recorded.

    With server.url in medops.yaml it is a request to the team server, which records who is
    logged in; --by is then left out.

    Example: medops models approve chest-xray-classifier 3 --by "Dr. Lee" --note "reviewed"
    """
    remote = _remote(project, by)
    if remote is not None:
        _deployed_remote(remote.approve(name, version, note), json_out, "approved")
        return
    _deployed(_lifecycle(project, name).approve(version, by or "", note), json_out, "approved")


@models_app.command("reject")
@handle_errors
def models_reject(name: str = typer.Argument(..., help="Registered model name."),
                  version: str = typer.Argument(..., help="Version to reject."),
                  by: str | None = ByOpt, note: str = NoteOpt,
                  project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Reject a version (never the live champion: roll back first).

    Example: medops models reject chest-xray-classifier 4 --by "Dr. Lee" --note "fails on AP"
    """
    remote = _remote(project, by)
    if remote is not None:
        found = remote.reject(name, version, note)
        if json_out:
            print_json(found)
        else:
            console.print(f"{found['name']} v{found['version']} rejected by "
                          f"{found['rejected_by']}", highlight=False)
        return
    info = _lifecycle(project, name).reject(version, by or "", note)
    if json_out:
        print_json(info.to_dict())
    else:
        console.print(f"{info.name} v{info.version} rejected by {info.tags['rejected_by']}",
                      highlight=False)


@models_app.command("rollback")
@handle_errors
def models_rollback(name: str = typer.Argument(..., help="Registered model name."),
                    to: str | None = typer.Option(
                        None, "--to", help="Version (default: the one live before)."),
                    by: str | None = ByOpt, note: str = NoteOpt,
                    project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Make an earlier live version the champion again.

    Example: medops models rollback chest-xray-classifier --by "Dr. Lee" --note "drift on v4"
    """
    remote = _remote(project, by)
    if remote is not None:
        _deployed_remote(remote.rollback(name, note, to), json_out, "rolled back to")
        return
    _deployed(_lifecycle(project, name).rollback(by or "", note, to), json_out,
              "rolled back to")


@models_app.command("history")
@handle_errors
def models_history(name: str = typer.Argument(..., help="Registered model name."),
                   at: str | None = typer.Option(
                       None, "--at", help="ISO 8601 time (naive = UTC): what was live then."),
                   verify: bool = typer.Option(
                       False, "--verify", help="Only check the audit log's hash chain; exit 9 "
                                               "naming the first row changed or deleted."),
                   project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Which version was live when, who made it live and why.

    Example: medops models history chest-xray-classifier --at 2026-01-31T12:00:00Z --json
    Example: medops models history chest-xray-classifier --verify
    """
    from rich.table import Table

    from medops.registry.lifecycle import deployment_to_dict, parse_time

    if verify:
        _verify_audit_chain(project, json_out)
        return
    lifecycle = _lifecycle(project, name)
    if at is not None:
        when = parse_time(at)
        live = lifecycle.live_at(when)
        if json_out:
            print_json(deployment_to_dict(live) if live else None)
        elif live is None:
            console.print(f"no version of {name} was live at {_when(when)}", highlight=False)
        else:
            console.print(f"{name} v{live.version} was live at {_when(when)} (since "
                          f"{_when(live.live_from)}, {live.action} by {live.actor}: "
                          f"{live.note})", highlight=False)
        return
    history = lifecycle.history()
    if json_out:
        print_json([deployment_to_dict(d) for d in history])
        return
    table = Table(title=f"{name}: deployments")
    for col in ("version", "live from", "live until", "action", "by", "note"):
        table.add_column(col, overflow="fold")
    for d in history:
        table.add_row(d.version, _when(d.live_from), _when(d.live_until) if d.live_until
                      else "[green]live[/green]", d.action, d.actor, d.note)
    console.print(table)


def _verify_audit_chain(project: Path | None, json_out: bool) -> None:
    """Walk the audit log's hash chain (the whole log: every model's sign-offs are links)."""
    from medops.errors import StoreError

    check = load_project(project).state.audit_trail.verify()
    if json_out:
        print_json(check.to_dict())
    if not check.intact:
        where = f"row {check.broken_id}" if check.broken_id is not None else "its end"
        raise StoreError(f"audit chain broken at {where}: {check.problem}; the audit log was "
                         "changed outside medops: restore it from a backup and find out who "
                         "had write access to the state database")
    if not json_out:
        console.print(f"audit chain intact ({check.rows} rows)", highlight=False)


@models_app.command("fetch")
@handle_errors
def models_fetch(source: str = typer.Argument(..., help="An http(s) URL, or a local file."),
                 sha256: str | None = typer.Option(
                     None, "--sha256", help="The file's SHA-256 (required for a URL)."),
                 name: str | None = typer.Option(
                     None, "--name", help="File name to find it by (default: its own)."),
                 project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Put pretrained weights in the project's store (.medops/weights/SHA256); print the path.

    A URL is downloaded and checked against --sha256 (a file with another hash is not kept); a
    local file is copied in, and checked when --sha256 is given. model.weights: URL with
    model.weights_sha256: HEX then trains from the stored file, offline.

    Example: medops models fetch https://example.org/net.pt --sha256 9f86d08...
    """
    from medops.api import Session

    path = Session(load_project(project)).fetch_weights(source, sha256, name=name)
    if json_out:
        print_json({"path": str(path), "sha256": path.name, "source": source})
    else:
        console.print(str(path), highlight=False, soft_wrap=True)


@models_app.command("import")
@handle_errors
def models_import(source: str = typer.Argument(..., help="txv:NAME, a TorchXRayVision model."),
                  name: str | None = typer.Option(
                      None, "--name", help="Registered model (default: the project's)."),
                  approve: bool = typer.Option(
                      False, "--approve", help="Make it the live champion at once."),
                  by: str | None = typer.Option(
                      None, "--by", help="With --approve: who signs off (audit log)."),
                  note: str | None = typer.Option(
                      None, "--note", help="With --approve: why (audit log)."),
                  project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Register a pretrained model as a new version, without training.

    txv:NAME is TorchXRayVision's network with its weights from the project's store (found by
    TorchXRayVision's file name; see `medops models fetch`): a multi-label model of its
    findings, its input convention as the preprocessing profile, its operating points as the
    per-finding thresholds. Like a trained version it is pending, alias candidate, until
    approved; --approve --by WHO --note WHY approves it at once.

    Example: medops models import txv:densenet121-res224-all --approve --by "Dr. Lee" --note "seed"
    """
    from medops.api import Session
    from medops.errors import ConfigError

    if approve and not (by and note):
        raise ConfigError("--approve needs --by WHO and --note WHY (they go to the audit log)")
    done = Session(load_project(project)).import_model(
        source, name=name, by=by if approve else None, note=note if approve else None)
    if json_out:
        print_json(done.to_dict())
    else:
        console.print(f"{done.name} v{done.version} registered from {done.source} "
                      f"({len(done.findings)} findings, weights {done.weights_sha256[:12]}), "
                      f"{done.approval}", highlight=False, soft_wrap=True)
