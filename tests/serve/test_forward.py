"""The batcher's forward pass gives the model's own probabilities and embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from medops.config.enums import Architecture, FrameMode, Normalize, WindowMode
from medops.preprocess import PreprocessProfile
from medops.registry import LoadedModel
from medops.serve.batcher import forward
from medops.train import ModelSpec, build_model, embed, predict_proba


@pytest.mark.parametrize("flip_tta", [False, True])
def test_forward_equals_predict_proba_and_embed(flip_tta: bool) -> None:
    import torch

    torch.manual_seed(0)
    spec = ModelSpec(architecture=Architecture.RESNET18, in_channels=1, num_classes=3,
                     small_input=True, flip_tta=flip_tta)
    model = build_model(spec).eval()
    profile = PreprocessProfile(size=(16, 16), channels=1, window=WindowMode.AUTO,
                                normalize=Normalize.ZSCORE, frames=FrameMode.MIDDLE)
    loaded = LoadedModel(model=model, classes=["a", "b", "c"], profile=profile, meta={})
    x = np.random.default_rng(0).normal(size=(5, 1, 16, 16)).astype(np.float32)
    x[:, :, :, :8] *= 3  # left and right differ, so flipping changes the logits

    probs, feats = forward(loaded, x)
    np.testing.assert_allclose(probs, predict_proba(model, x), atol=1e-5)
    np.testing.assert_allclose(feats, embed(model, x), atol=1e-5)
    assert feats.shape == (5, model.feature_dim)
    if flip_tta:  # the check above would not notice a forward that skipped the flips
        unflipped = torch.softmax(model.head(model.backbone(torch.from_numpy(x))), 1)
        assert np.abs(unflipped.detach().numpy() - probs).max() > 1e-4
