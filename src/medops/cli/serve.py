"""`medops serve` (the real-time endpoint) and `medops feedback import` (ground truth)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from medops.cli.common import JsonOpt, ProjectOpt, handle_errors, load_project
from medops.cli.render import console, err_console, print_json
from medops.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from medops.storage.serving import ServingStats

feedback_app = typer.Typer(help="Ground-truth labels for served predictions.",
                           no_args_is_help=True)


@handle_errors
def serve(model: str | None = typer.Option(None, "--model", help="NAME@ALIAS (followed as the "
                                           "alias moves) or NAME/VERSION; default: serve.model, "
                                           "else the project's model @champion."),
          host: str | None = typer.Option(None, help="Interface (default: serve.host; "
                                          "0.0.0.0 in a container)."),
          port: int | None = typer.Option(None, help="Port (default: serve.port, 8080)."),
          access_log: bool = typer.Option(False, help="Log every request (no bodies)."),
          project: Path | None = ProjectOpt) -> None:
    """Serve the live model over HTTP until SIGTERM/Ctrl-C.

    POST /v1/models/NAME/predict (or /invocations) with a DICOM, PNG or JPEG body; GET /ping,
    /healthz, /readyz, /metrics; OpenAPI docs at /docs.

    Example: medops serve --port 8080
    """
    from medops.monitor import CaptureStore
    from medops.registry import ModelRegistry
    from medops.serve import ModelRef, create_app, forward_workers, run_server, share_cores

    proj = load_project(project)
    cfg = proj.config.serve
    ref = ModelRef.parse(model or cfg.model, proj.config.model_name)
    registry = proj.registry if ref.name == proj.config.model_name else \
        ModelRegistry(proj.tracker.client, ref.name, proj.artifacts / "models")
    if ref.version is not None:  # an alias may get a version later; a missing version will not
        registry.get(ref.version)
    token = None
    if cfg.token_env:
        token = os.environ.get(cfg.token_env)
        if not token:
            raise ConfigError(f"serve.token_env names {cfg.token_env!r} but that environment "
                              f"variable is empty or unset; export {cfg.token_env}=<token>, or "
                              "remove serve.token_env to serve without authentication")
    app = create_app(registry, cfg, ref=ref, capture=CaptureStore.under(proj.artifact_sync),
                     token=token, stats=_serving_stats(proj))
    bind_host, bind_port = host or cfg.host, cfg.port if port is None else port
    workers = forward_workers(cfg.workers)
    threads = share_cores(workers)
    console.print(f"serving {ref} on http://{bind_host}:{bind_port} (docs at /docs); "
                  f"{workers} forward worker(s) x {threads} torch thread(s)"
                  + (", bearer token required" if token else ""), highlight=False)
    run_server(app, bind_host, bind_port, access_log=access_log)


def _serving_stats(proj: Any) -> ServingStats | None:
    """The store of the per-minute figures the dashboard shows; serving goes on without it
    when the state database cannot be opened (predictions matter more than their figures)."""
    from medops.storage.serving import ServingStats

    try:
        return ServingStats(proj.state.db)
    except StoreError as exc:
        err_console.print(f"[yellow]warning:[/yellow] serving figures are not recorded: "
                          f"{escape(str(exc))}", highlight=False)
        return None


@feedback_app.command("import")
@handle_errors
def feedback_import(csv_file: Path = typer.Argument(..., help="CSV with columns request_id,label"
                                                    " (and optionally image)."),
                    project: Path | None = ProjectOpt, json_out: bool = JsonOpt) -> None:
    """Add ground-truth labels for served requests (request ids from the predict answers).

    A multi-label model's labels are its findings: Effusion|Cardiomegaly, or No Finding.

    Example: medops feedback import labels.csv
    """
    from medops.monitor import CaptureStore

    proj = load_project(project)
    count = CaptureStore.under(proj.artifact_sync).import_feedback_csv(csv_file)
    if json_out:
        print_json({"imported": count, "file": str(csv_file)})
    else:
        console.print(f"imported {count} labels from {csv_file}", highlight=False)
