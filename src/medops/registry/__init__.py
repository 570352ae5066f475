"""MLflow tracking and the model registry: packaged pyfunc models, versions, tags and aliases."""

from medops.registry.packaging import (
    LoadedModel,
    MedopsImageClassifier,
    load_model_dir,
    package_model,
)
from medops.registry.registry import CANDIDATE, CHAMPION, ModelRegistry, ModelVersionInfo
from medops.registry.tracking import Tracker

__all__ = [
    "CANDIDATE",
    "CHAMPION",
    "LoadedModel",
    "MedopsImageClassifier",
    "ModelRegistry",
    "ModelVersionInfo",
    "Tracker",
    "load_model_dir",
    "package_model",
]
