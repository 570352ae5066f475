"""Networks from a user's code: ``package.module:factory`` or ``path.py:factory`` (being written)."""

from __future__ import annotations

from pathlib import Path

from medops.errors import ConfigError
from medops.train.classifier import Classifier
from medops.train.spec import ModelSpec


def build(spec: ModelSpec, *, weights: Path | None) -> Classifier:
    raise ConfigError(f"{spec.architecture}: entry points are not supported yet")
