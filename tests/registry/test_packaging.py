"""The packaged pyfunc folder: read back as it was written, and saved without MLflow's noise."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from medops.config.enums import Architecture, FrameMode, Normalize, WindowMode
from medops.preprocess import PreprocessProfile
from medops.registry.packaging import load_model_dir, package_model
from medops.train import ModelSpec, build_model, predict_proba


def test_a_packaged_model_loads_back_with_its_profile_and_warns_nothing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec(Architecture.RESNET18, 1, 2, small_input=True))
    profile = PreprocessProfile(size=(28, 28), channels=1, window=WindowMode.AUTO,
                                normalize=Normalize.ZSCORE, frames=FrameMode.MIDDLE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        package_model(model, ["normal", "nodule"], profile, {"run": "r1"}, tmp_path / "m")
    assert [str(w.message) for w in caught if "input example" in str(w.message)] == []

    loaded = load_model_dir(tmp_path / "m")
    assert loaded.classes == ["normal", "nodule"] and loaded.profile == profile
    x = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(predict_proba(loaded.model, x), predict_proba(model, x),
                               rtol=1e-5, atol=1e-6)
