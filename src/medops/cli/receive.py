"""`medops receive`: the DICOM C-STORE receiver, in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path

import typer

from medops.cli.common import ProjectOpt, handle_errors
from medops.cli.common import load_project as _project


@handle_errors
def receive(
    source: str | None = typer.Option(None, "--source", help="data.sources.NAME to run "
                                      "(default: the only dicom-scp source)."),
    ae_title: str | None = typer.Option(None, "--ae-title", help="Our AE title (called AE)."),
    port: int | None = typer.Option(None, "--port", help="TCP port (default 11112)."),
    host: str | None = typer.Option(None, "--host", help="Address to listen on."),
    allow: list[str] | None = typer.Option(None, "--allow", help="A calling AE title allowed "
                                           "to store (repeat; replaces the configured list)."),
    project: Path | None = ProjectOpt,
) -> None:
    """Receive DICOM over C-STORE into the project.

    Completed series are de-identified and become items. Each instance is on disk (fsynced)
    and indexed before the sender hears success; a series is ingested after
    data.sources.NAME.quiet_seconds without new instances.

    Example: medops receive --ae-title MEDOPS --port 11112 --allow CT01
    """
    from medops.data.ingest import IngestReport, ingest_files
    from medops.data.scp import Receiver, serve_until_signalled
    from medops.data.scp.server import receiver_config
    from medops.storage import local_path

    proj = _project(project)
    name, cfg = receiver_config(proj.config.data.sources, source, ae_title=ae_title, port=port,
                                host=host, allowed_calling_aets=allow or None)
    storage = local_path(proj.root, cfg.storage, key=f"data.sources.{name}.storage")
    settings = proj.ingest_settings  # built before listening: a bad secret fails here

    def ingest(files: Iterable[tuple[str, bytes]], label: str | None) -> IngestReport:
        return ingest_files(files, name, proj.state, proj.landing_dir, settings, label)

    receiver = Receiver(name, cfg, storage, proj.state, ingest)
    _configure_logging()
    try:
        serve_until_signalled(receiver)
    finally:
        proj.close()


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom's INFO and DEBUG lines can carry UIDs and patient attributes
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
