"""MLflow tracking and the model registry: packaged pyfunc models, versions, tags and aliases."""

from medops.registry.lifecycle import AUTO_ACTOR, ModelLifecycle, VersionStatus
from medops.registry.packaging import (
    LoadedModel,
    MedopsImageClassifier,
    load_model_dir,
    package_model,
)
from medops.registry.registry import CANDIDATE, CHAMPION, ModelRegistry, ModelVersionInfo
from medops.registry.tracking import Tracker

__all__ = [
    "AUTO_ACTOR",
    "CANDIDATE",
    "CHAMPION",
    "LoadedModel",
    "MedopsImageClassifier",
    "ModelLifecycle",
    "ModelRegistry",
    "ModelVersionInfo",
    "Tracker",
    "VersionStatus",
    "load_model_dir",
    "package_model",
]
