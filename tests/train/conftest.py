"""Tiny, learnable image data for training tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from medops.config.enums import Architecture
from medops.train import ArrayData, ModelSpec


def _make_data(n: int, *, seed: int, size: int = 16, positive_fraction: float = 0.5) -> ArrayData:
    """Noise images; class 1 has a bright square in the top-left corner."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < positive_fraction).astype(np.int64)
    x = rng.normal(size=(n, 1, size, size)).astype(np.float32)
    x[:, :, 2:7, 2:7] += 1.5 * y[:, None, None, None]
    return ArrayData(x, y)


DataFactory = Callable[..., ArrayData]


@pytest.fixture
def make_data() -> DataFactory:
    """``make_data(n, seed=..., size=16, positive_fraction=0.5)``."""
    return _make_data


@pytest.fixture
def tiny_spec() -> ModelSpec:
    # with its downsampling stem a 16 px ResNet-18 costs little, and it learns in a few steps
    return ModelSpec(Architecture.RESNET18, in_channels=1, num_classes=2, small_input=False)


@pytest.fixture
def train_set() -> ArrayData:
    return _make_data(96, seed=0)


@pytest.fixture
def val_set() -> ArrayData:
    return _make_data(48, seed=1)
