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
        unflipped = torch.softmax(model.single_view_logits(torch.from_numpy(x)), 1)
        assert np.abs(unflipped.detach().numpy() - probs).max() > 1e-4


def _loaded(seed: int = 0) -> LoadedModel:
    import torch

    torch.manual_seed(seed)
    spec = ModelSpec(architecture=Architecture.RESNET18, in_channels=1, num_classes=3,
                     small_input=True, flip_tta=True)
    profile = PreprocessProfile(size=(16, 16), channels=1, window=WindowMode.AUTO,
                                normalize=Normalize.ZSCORE, frames=FrameMode.MIDDLE)
    return LoadedModel(model=build_model(spec).eval(), classes=["a", "b", "c"], profile=profile,
                       meta={})


def test_concurrent_forward_passes_keep_their_own_results() -> None:
    """Several forward workers share one model: each caller gets its own images' outputs."""
    from concurrent.futures import ThreadPoolExecutor

    loaded = _loaded()
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(n, 1, 16, 16)).astype(np.float32) for n in (1, 3, 2, 5) * 4]
    expected = [forward(loaded, x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: forward(loaded, x), inputs))
    for (p, f), (ep, ef) in zip(got, expected, strict=True):
        np.testing.assert_allclose(p, ep, atol=1e-5)
        np.testing.assert_allclose(f, ef, atol=1e-5)


def test_batcher_with_several_workers_answers_every_request_with_its_own_image() -> None:
    import asyncio

    from medops.serve.batcher import MicroBatcher
    from medops.serve.host import Deployment
    from medops.serve.inputs import PreparedImage

    loaded = _loaded()
    deployment = Deployment("m", "1", loaded)
    rng = np.random.default_rng(2)
    images = [rng.normal(size=(1, 16, 16)).astype(np.float32) for _ in range(40)]
    expected, _ = forward(loaded, np.stack(images))
    sizes: list[int] = []

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(max_batch=8, max_wait_ms=2, workers=2, on_batch=sizes.append)
        batcher.start()
        try:
            results = await asyncio.gather(*(
                batcher.submit(PreparedImage(x, "png", 16, 16, {}), deployment) for x in images))
        finally:
            await batcher.stop()
        return [r.probabilities for r in results]

    got = asyncio.run(main())
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-5)
    assert sum(sizes) == 40 and max(sizes) <= 8 and len(sizes) >= 5


def test_batches_run_on_a_channels_last_copy_with_the_same_outputs() -> None:
    import copy

    import torch

    from medops.serve.host import BATCHED_FROM, Deployment

    loaded = _loaded()
    batched = copy.deepcopy(loaded.model).to(memory_format=torch.channels_last)
    deployment = Deployment("m", "1", loaded, batched)
    assert deployment.model_for(1) is loaded.model
    assert deployment.model_for(BATCHED_FROM) is batched
    x = np.random.default_rng(3).normal(size=(8, 1, 16, 16)).astype(np.float32)
    probs, feats = forward(loaded, x, deployment.model_for(len(x)))
    ref_probs, ref_feats = forward(loaded, x)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    np.testing.assert_allclose(feats, ref_feats, atol=1e-5)
