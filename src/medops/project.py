"""The composition root: a Project builds every store, client and executor from its config.

Nothing else in medops reads configuration from globals or the environment; everything a
component needs is handed to it here.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medops.config import CONFIG_FILE, MedopsConfig, load_config, render_template
from medops.errors import ConfigError
from medops.storage import StateStore, local_path, sqlalchemy_url

if TYPE_CHECKING:  # torch and MLflow load only when a command needs them
    from medops.executor import Executor
    from medops.registry import ModelRegistry, Tracker


class Project:
    """A folder with medops.yaml, and the services its configuration names."""

    def __init__(self, root: Path, config: MedopsConfig) -> None:
        self.root = root.resolve()
        self.config = config

    @classmethod
    def load(cls, root: Path | None = None, overrides: dict[str, Any] | None = None) -> Project:
        """Load the project at ``root``, or the nearest folder upwards holding medops.yaml."""
        start = (root or Path.cwd()).resolve()
        folder = next((p for p in (start, *start.parents) if (p / CONFIG_FILE).is_file()), None)
        if folder is None:
            raise ConfigError(f"no {CONFIG_FILE} in {start} or above; create a project with "
                              f"`medops init {start}`")
        return cls(folder, load_config(folder / CONFIG_FILE, overrides))

    @staticmethod
    def init(root: Path, name: str | None = None, force: bool = False) -> Path:
        """Scaffold ``root/medops.yaml``; refuses to overwrite an existing one unless ``force``."""
        root.mkdir(parents=True, exist_ok=True)
        path = root / CONFIG_FILE
        if path.exists() and not force:
            raise ConfigError(f"{path} already exists; use --force to overwrite it")
        project = name or _project_name(root.resolve().name)
        path.write_text(render_template(project))
        (root / "data" / "raw").mkdir(parents=True, exist_ok=True)
        gitignore = root / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text(".medops/\n")
        load_config(path)  # the scaffold must always be valid
        return path

    def with_config(self, config: MedopsConfig) -> Project:
        """The same project folder under another configuration (a resumed run's snapshot)."""
        return Project(self.root, config)

    @cached_property
    def artifacts(self) -> Path:
        path = local_path(self.root, self.config.storage.artifacts, key="storage.artifacts")
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def state(self) -> StateStore:
        return StateStore(sqlalchemy_url(self.root, self.config.storage.state))

    @cached_property
    def tracker(self) -> Tracker:
        from medops.registry import Tracker

        uri = sqlalchemy_url(self.root, self.config.storage.tracking)
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return Tracker(uri, self.config.project, self.artifacts / "mlflow")

    @cached_property
    def registry(self) -> ModelRegistry:
        from medops.registry import ModelRegistry

        return ModelRegistry(self.tracker.client, self.config.model_name,
                             self.artifacts / "models")

    def executor(self) -> Executor:
        from medops.executor import make_executor

        return make_executor(self.config.executor)

    def close(self) -> None:
        if "state" in self.__dict__:
            self.state.close()


def _project_name(folder: str) -> str:
    import re

    name = re.sub(r"[^a-z0-9._-]+", "-", folder.lower()).strip("-._") or "medops-project"
    return name[:63]


def import_source(project: Project, path: Path) -> dict[str, int | str]:
    """Add the items of a .npz file or a folder to the project's catalog (no run is started)."""
    from medops.data.sources import FolderSource, NpzSource, Source

    path = path.resolve()
    source: Source
    if path.is_file() and path.suffix == ".npz":
        source = NpzSource(path, project.artifacts.parent / "data" / path.stem)
    elif path.is_dir():
        cfg = project.config.data
        source = FolderSource(path, cfg.labels, cfg.frames, csv_root=project.root)
    else:
        raise ConfigError(f"cannot import {path}: expected a MedMNIST .npz file or a folder of "
                          "DICOM/PNG/JPEG images")
    items = list(source.list_items())
    new, changed = project.state.upsert_items(items)
    project.state.add_event("data.arrived", {"source": source.name, "new": new,
                                             "changed": changed})
    quarantined = sum(1 for i in items if i.status.value == "quarantined")
    return {"source": source.name, "items": len(items), "new": new, "changed": changed,
            "quarantined": quarantined}
