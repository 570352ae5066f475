"""The composition root: a Project builds every store, client and executor from its config.

Nothing else in medops reads configuration from globals or the environment; everything a
component needs is handed to it here.
"""

from __future__ import annotations

import os
import re
import secrets
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medops.config import CONFIG_FILE, MedopsConfig, load_config, render_template
from medops.config.schema import PROJECT_NAME
from medops.errors import ConfigError
from medops.storage import EventKind, StateStore, sqlalchemy_url
from medops.storage.artifact_sync import ArtifactSync
from medops.storage.artifacts import is_remote, working_folder

if TYPE_CHECKING:  # torch and MLflow load only when a command needs them
    from medops.data.ingest import IngestReport, IngestSettings
    from medops.executor import Executor
    from medops.registry import ModelRegistry, Tracker
    from medops.train.weights import WeightsStore


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
        if name is not None and not re.fullmatch(PROJECT_NAME, name):
            raise ConfigError(f"--name {name!r} is not a valid project name: use lowercase "
                              "letters, digits, '.', '_' and '-', starting with a letter or "
                              f"digit, at most 63 characters (e.g. {_project_name(name)})")
        path = root / CONFIG_FILE
        try:
            root.mkdir(parents=True, exist_ok=True)
            if path.exists() and not force:
                raise ConfigError(f"{path} already exists; use --force to overwrite it")
            path.write_text(render_template(name or _project_name(root.resolve().name)))
            (root / "data" / "raw").mkdir(parents=True, exist_ok=True)
            _ignore_state(root / ".gitignore")
        except OSError as exc:
            raise ConfigError(f"cannot create a project in {root}: {_os_reason(root, exc)}") \
                from None
        load_config(path)  # the scaffold must always be valid
        return path

    def with_config(self, config: MedopsConfig) -> Project:
        """The same project folder under another configuration (a resumed run's snapshot)."""
        return Project(self.root, config)

    @cached_property
    def artifacts(self) -> Path:
        """The folder artifacts are read and written in: ``storage.artifacts`` itself, or for
        an object store root, the local working copy that :attr:`artifact_sync` keeps."""
        path = working_folder(self.root, self.config.storage.artifacts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def artifact_sync(self) -> ArtifactSync:
        """Carries shared artifacts between :attr:`artifacts` and a remote root (no-ops when
        the root is local); see :mod:`medops.storage.artifact_sync`."""
        return ArtifactSync.open(self.root, self.config.storage.artifacts, self.artifacts)

    @cached_property
    def state(self) -> StateStore:
        return StateStore(sqlalchemy_url(self.root, self.config.storage.state))

    @cached_property
    def tracker(self) -> Tracker:
        from medops.registry import Tracker

        uri = sqlalchemy_url(self.root, self.config.storage.tracking)
        if uri.startswith("sqlite:///"):
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return Tracker(uri, self.config.project, self._mlflow_artifacts(uri))

    def _mlflow_artifacts(self, tracking: str) -> Path | str | None:
        """Where a new experiment keeps its runs' artifacts. An MLflow server chooses (with
        ``--serve-artifacts``, ``mlflow-artifacts:/`` through itself), so every machine reads a
        model the same way; local tracking with an object store root uses its ``mlflow/``."""
        if tracking.startswith(("http://", "https://")):
            return None
        artifacts = self.config.storage.artifacts
        return f"{artifacts.rstrip('/')}/mlflow" if is_remote(artifacts) else \
            self.artifacts / "mlflow"

    @cached_property
    def registry(self) -> ModelRegistry:
        from medops.registry import ModelRegistry

        return ModelRegistry(self.tracker.client, self.config.model_name,
                             self.artifacts / "models")

    @cached_property
    def weights_store(self) -> WeightsStore:
        """Pretrained weights by SHA-256, under ``<project>/.medops/weights/``."""
        from medops.train.weights import WeightsStore

        return WeightsStore.for_project(self.root)

    @cached_property
    def landing_dir(self) -> Path:
        """Where files from network sources are written, one folder per source."""
        return self.artifacts.parent / "landing"

    @cached_property
    def ingest_settings(self) -> IngestSettings:
        """Selection rules and the de-identifier every network source goes through."""
        from medops.data.ingest import IngestSettings

        deid = self.config.data.deid
        return IngestSettings.from_config(self.config.data,
                                          self._deid_secret() if deid.enabled else None)

    def _deid_secret(self) -> bytes:
        """The variable ``data.deid.secret_env`` if set, else a secret made once in a file."""
        from medops.config import resolve_path

        cfg = self.config.data.deid
        value = os.environ.get(cfg.secret_env, "")
        if value:
            if len(value) < 16:
                raise ConfigError(f"{cfg.secret_env} holds {len(value)} characters; the "
                                  "de-identification secret needs at least 16")
            return value.encode()
        return read_or_create_secret(resolve_path(self.root, cfg.secret_file))

    def executor(self) -> Executor:
        from medops.executor import make_executor

        return make_executor(self.config.executor)

    def close(self) -> None:
        if "state" in self.__dict__:
            self.state.close()


def read_or_create_secret(path: Path) -> bytes:
    """The secret in ``path``, created (owner-only, exclusively) on first use."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # complete or absent, and never replaces a secret in use
        except FileExistsError:
            pass  # another process made it first: theirs is the one
        finally:
            tmp.unlink()
    secret = path.read_text().strip()
    if len(secret) < 16:
        raise ConfigError(f"{path} holds a de-identification secret shorter than 16 characters; "
                          "delete it to have a new one made (UIDs will then map differently)")
    return secret.encode()


def _ignore_state(gitignore: Path) -> None:
    """Keep .medops/ out of git: it holds the state DB, the de-identification secret and
    received images (PHI)."""
    text = gitignore.read_text() if gitignore.exists() else ""
    if any(line.strip().strip("/") == ".medops" for line in text.splitlines()):
        return
    separator = "\n" if text and not text.endswith("\n") else ""
    with gitignore.open("a") as f:
        f.write(f"{separator}.medops/\n")


def _os_reason(root: Path, exc: OSError) -> str:
    """Why the system refused to make the project folder, and what to do about it."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        blocker = next((p for p in (root, *root.parents) if p.is_file()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder; choose another path"
    return f"{exc.strerror or exc} ({exc.filename}); choose a folder you can write to"


def _project_name(folder: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", folder.lower()).strip("-._") or "medops-project"
    return name[:63]


def import_source(project: Project, source: str | Path | None,
                  name: str | None = None, events: Path | None = None) -> dict[str, Any]:
    """Add items to the project's catalog (no run is started): a .npz file, a folder, a
    source URI (s3://..., an http(s) DICOMweb root, healthimaging://...) or ``name``, a source
    of data.sources; ``events``: a JSON file of HealthImaging EventBridge events naming the
    image sets to fetch."""
    if name is not None or events is not None:
        return import_remote(project, source if isinstance(source, str) else None, name,
                             events).to_dict()
    if isinstance(source, str) and "://" in source:
        return import_remote(project, source).to_dict()
    if source is None:
        raise ConfigError("nothing to import: give a file, a folder, a URI or --source NAME")
    if not str(source).strip():
        # Path("") is the current folder: an unset shell variable would import it.
        raise ConfigError("SOURCE is empty: give a .npz file, a folder (. for the current "
                          "one), an s3:// or http(s):// URI, or --source NAME")
    if not Path(source).exists():
        raise ConfigError(f"cannot import {source}: {Path(source).resolve()} does not exist; "
                          "check the path (relative paths start at the current folder)")
    return import_local(project, Path(source))


def import_remote(project: Project, uri: str | None, name: str | None = None,
                  events: Path | None = None) -> IngestReport:
    """Poll a remote source from its stored cursor and ingest what is new."""
    from medops.data.ingest import ingest_remote
    from medops.data.sources.factory import make_remote_source, remote_config_for_uri

    settings = project.ingest_settings  # a bad secret or rule fails before any download
    if name is not None:
        sources = project.config.data.sources
        if name not in sources:
            raise ConfigError(f"--source {name!r}: no data.sources.{name} in medops.yaml; "
                              f"the configured sources are {sorted(sources) or 'none'}")
        cfg = sources[name]
    else:
        name, cfg = remote_config_for_uri(uri or "")
    source = make_remote_source(name, cfg)
    if events is not None:
        from medops.data.sources.healthimaging import HealthImagingSource, load_events

        if not isinstance(source, HealthImagingSource):
            raise ConfigError(f"--event: source {name!r} is a {cfg.kind} source; events are "
                              "HealthImaging EventBridge events (kind: healthimaging)")
        source = source.for_events(load_events(events))
    return ingest_remote(source, project.state, project.landing_dir, settings)


def import_local(project: Project, path: Path) -> dict[str, Any]:
    """Add the items of a .npz file or a folder to the project's catalog."""
    from medops.data.sources import FolderSource, NpzSource, Source

    path = path.resolve()
    source: Source
    if path.is_file() and path.suffix == ".npz":
        source = NpzSource(path, project.artifacts.parent / "data" / path.stem)
    elif path.is_dir():
        cfg = project.config.data
        source = FolderSource(path, cfg.labels, cfg.frames, csv_root=project.root,
                              task=project.config.task)
    else:
        raise ConfigError(f"cannot import {path}: expected a MedMNIST .npz file, a folder of "
                          "DICOM/PNG/JPEG images, an s3:// or http(s):// URI, or --source NAME")
    items = list(source.list_items())
    new, changed = project.state.upsert_items(items)
    project.state.add_event(EventKind.DATA_ARRIVED, {"source": source.name, "new": new,
                                             "changed": changed})
    quarantined = sum(1 for i in items if i.status.value == "quarantined")
    return {"source": source.name, "items": len(items), "new": new, "changed": changed,
            "quarantined": quarantined}
