"""Registered model versions: tags and aliases (``candidate``, ``champion``), never stages."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medops.errors import NotFoundError, RegistryError
from medops.registry.packaging import LoadedModel, load_model_dir

CANDIDATE = "candidate"
CHAMPION = "champion"


@dataclass
class ModelVersionInfo:
    name: str
    version: str
    run_id: str | None
    source: str
    created_at: datetime
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "run_id": self.run_id,
                "source": self.source, "created_at": self.created_at.isoformat(),
                "aliases": self.aliases, "tags": self.tags}


class ModelRegistry:
    """One registered model's versions, through an explicit MlflowClient."""

    def __init__(self, client: Any, name: str, cache_dir: Path) -> None:
        self.client = client
        self.name = name
        self._cache = cache_dir

    def register(self, run_id: str, source: str, tags: dict[str, str],
                 alias: str | None = CANDIDATE) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            try:
                self.client.get_registered_model(self.name)
            except MlflowException:
                self.client.create_registered_model(
                    self.name, description="Image classifier trained by medops.")
            mv = self.client.create_model_version(self.name, source=source, run_id=run_id,
                                                  tags=tags)
            if alias:
                self.client.set_registered_model_alias(self.name, alias, mv.version)
        except MlflowException as exc:
            raise RegistryError(f"could not register {self.name!r}: {exc}") from exc
        return self.get(str(mv.version))

    def get(self, version: str) -> ModelVersionInfo:
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise NotFoundError(f"model {self.name!r} has no version {version!r}") from exc
        return self._info(mv)

    def check_exists(self) -> None:
        """Raise :class:`NotFoundError` naming the registered models if this one is not one."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException as exc:
            known = sorted(m.name for m in self.client.search_registered_models())
            raise NotFoundError(
                f"no registered model named {self.name!r}; registered: "
                f"{', '.join(known) if known else 'none yet (medops run registers one)'}"
            ) from exc

    def by_alias(self, alias: str) -> ModelVersionInfo | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._info(self.client.get_model_version_by_alias(self.name, alias))
        except MlflowException:
            return None

    def versions(self) -> list[ModelVersionInfo]:
        found = self.client.search_model_versions(f"name='{self.name}'")
        full = [self.get(str(mv.version)) for mv in found]  # search results omit aliases
        return sorted(full, key=lambda v: int(v.version), reverse=True)

    def set_tags(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, str(version), key, value)

    def set_alias(self, alias: str, version: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.set_registered_model_alias(self.name, alias, str(version))
        except MlflowException as exc:
            raise RegistryError(f"could not point {self.name}@{alias} at v{version}: "
                                f"{exc}") from exc

    def delete_alias(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(self.name, alias)
        except MlflowException as exc:
            raise RegistryError(f"could not delete {self.name}@{alias}: {exc}") from exc

    def download(self, version: str) -> Path:
        """The model folder of ``version``, downloaded once into the local cache."""
        import mlflow.artifacts

        target = self._cache / self.name / str(version)
        if (target / "MLmodel").is_file():
            return target
        info = self.get(version)
        # A folder of its own per download: two servers (or threads) fetching the same
        # version at once must not delete each other's half-written files.
        tmp = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex[:8]}")
        tmp.mkdir(parents=True)
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=info.source, dst_path=str(tmp),
                tracking_uri=self.client._tracking_client.tracking_uri)
            inner = next((p.parent for p in tmp.rglob("MLmodel")), None)
            if inner is None:
                raise RegistryError(f"{self.name} version {version}: no MLmodel file under "
                                    f"{info.source}; the version's artifacts are incomplete")
            if not (target / "MLmodel").is_file():
                shutil.rmtree(target, ignore_errors=True)
                try:
                    inner.rename(target)
                except OSError:  # another download finished first: use its copy
                    if not (target / "MLmodel").is_file():
                        raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def load(self, version: str) -> LoadedModel:
        return load_model_dir(self.download(version))

    def _info(self, mv: Any) -> ModelVersionInfo:
        return ModelVersionInfo(
            name=mv.name, version=str(mv.version), run_id=mv.run_id, source=mv.source,
            created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=timezone.utc),
            aliases=list(getattr(mv, "aliases", []) or []), tags=dict(mv.tags or {}),
        )
