"""Read-only views of MLflow for readers that must not talk to it themselves (the dashboard):
the registered models, and the files of a run (evaluation plots, the model card).

A finished run's artifacts do not change, so each file is downloaded once into a local cache
folder, through a folder of its own per download (two server workers fetching the same file
must not see each other's half-written copy), and read from there afterwards.
"""

from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from medops.errors import NotFoundError, RegistryError
from medops.registry.model_card import CARD_DIR, CARD_JSON, ModelCard

#: Run artifact paths a reader may ask for: folders and names of letters, digits, ``._-``.
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def registered_models(client: Any) -> list[str]:
    """The names of every registered model, sorted."""
    try:
        return sorted(str(m.name) for m in client.search_registered_models())
    except Exception as exc:
        raise RegistryError(f"MLflow could not list the registered models: {exc}") from exc


class RunFiles:
    """Read the artifacts of MLflow runs through ``client`` (an MlflowClient), cached under
    ``cache_dir``."""

    def __init__(self, client: Any, cache_dir: Path) -> None:
        self.client = client
        self.cache_dir = cache_dir

    def list(self, run_id: str, folder: str) -> list[str]:
        """The file names directly in ``folder`` of the run's artifacts (empty if none)."""
        _check(run_id, folder)
        try:
            found = self.client.list_artifacts(run_id, folder)
        except Exception as exc:  # MLflow raises its own types; none are ours to leak
            raise RegistryError(f"MLflow could not list {folder!r} of run {run_id}: "
                                f"{exc}") from exc
        return sorted(Path(f.path).name for f in found if not f.is_dir)

    def fetch(self, run_id: str, path: str) -> Path:
        """The local copy of the artifact ``path`` of ``run_id`` (downloaded once)."""
        _check(run_id, path)
        target = self.cache_dir / run_id / path
        if target.is_file():
            return target
        tmp = self.cache_dir / run_id / f".partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            try:
                got = Path(self.client.download_artifacts(run_id, path, str(tmp)))
            except Exception as exc:
                raise NotFoundError(f"run {run_id} has no artifact {path!r} ({exc})") from exc
            if not got.is_file():
                raise NotFoundError(f"run {run_id}: the artifact {path!r} is a folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            got.replace(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def model_card(self, run_id: str) -> ModelCard | None:
        """The model card the register step logged to ``run_id``; None for versions
        registered before cards were written."""
        if CARD_JSON not in self.list(run_id, CARD_DIR):
            return None
        return ModelCard.from_json(self.fetch(run_id, f"{CARD_DIR}/{CARD_JSON}").read_text())


def _check(run_id: str, path: str) -> None:
    if not re.fullmatch(r"[0-9a-f]{8,64}", run_id or ""):
        raise NotFoundError(f"{run_id!r} is not an MLflow run id")
    if not _SAFE.match(path) or ".." in path.split("/"):
        raise NotFoundError(f"{path!r} is not an artifact path of a run")
