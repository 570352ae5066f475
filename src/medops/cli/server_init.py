"""`medops server init DIR`: write the team stack (registered in the `medops server` group)."""

from __future__ import annotations

from pathlib import Path

import typer

from medops.cli.common import JsonOpt, handle_errors
from medops.cli.render import console, print_json


@handle_errors
def server_init(directory: Path = typer.Argument(..., help="Folder for the stack (created)."),
                domain: str | None = typer.Option(None, help="The host name people use "
                                                  "(default: the stack's, else localhost)."),
                force: bool = typer.Option(False, help="Render compose.yaml, nginx.conf and the "
                                           "rest again; secrets, certificate and project stay."),
                cert: Path | None = typer.Option(None, help="Your TLS certificate (PEM, full "
                                                 "chain); default: one the stack issues."),
                key: Path | None = typer.Option(None, help="The private key of --cert (PEM)."),
                https_port: int | None = typer.Option(None, help="Public HTTPS port (443)."),
                http_port: int | None = typer.Option(None, help="HTTP port that redirects (80)."),
                json_out: bool = JsonOpt) -> None:
    """Write a deployable team stack (compose, nginx, MLflow auth) with generated secrets.

    PostgreSQL, MinIO, MLflow with authentication, the medops server, agent and serving, nginx
    with TLS; secrets generated into DIR/.env (0600). Running it again keeps every secret;
    DIR/README.md says how to start it and log in.

    Example: medops server init /srv/medops --domain medops.example.org
    """
    from medops.server.stack import StackOptions, init_stack

    report = init_stack(directory, StackOptions(domain=domain, force=force, cert=cert, key=key,
                                                https_port=https_port, http_port=http_port))
    if json_out:
        print_json({"root": str(report.root), "url": report.url,
                    "written": [str(p) for p in report.written],
                    "kept": [str(p) for p in report.kept],
                    "secrets_generated": list(report.secrets_generated),
                    "secrets_kept": list(report.secrets_kept)})
        return
    for path in report.written:
        console.print(f"  wrote {path.relative_to(report.root)}", highlight=False)
    for path in report.kept:
        console.print(f"  kept  {path.relative_to(report.root)}", highlight=False)
    made, kept = len(report.secrets_generated), len(report.secrets_kept)
    console.print(f"secrets: {made} generated, {kept} kept (in {report.root / '.env'}, 0600)",
                  highlight=False)
    console.print(f"next: read {report.root / 'README.md'}, then `docker compose up -d` in "
                  f"{report.root}; log in at {report.url}/ as admin with MEDOPS_ADMIN_PASSWORD "
                  "from .env", highlight=False)
