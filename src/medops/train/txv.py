"""TorchXRayVision networks and their input convention (being written)."""

from __future__ import annotations

from pathlib import Path

from medops.errors import ConfigError
from medops.train.classifier import Classifier
from medops.train.spec import ModelSpec


def build(spec: ModelSpec, *, pretrained: bool, weights: Path | None) -> Classifier:
    raise ConfigError(f"{spec.architecture}: TorchXRayVision models are not supported yet")
