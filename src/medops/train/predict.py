"""Batched inference with a trained :class:`~medops.train.architectures.Classifier`."""

from __future__ import annotations

import numpy as np
import torch

from medops.errors import DataError
from medops.train.classifier import Classifier


def _batches(
    model: Classifier, x: np.ndarray, batch_size: int, device: str | torch.device, embed: bool
) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[1] != model.spec.in_channels:
        raise DataError(
            f"expected images of shape (N, {model.spec.in_channels}, H, W); got {x.shape}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive (got {batch_size})")
    dev = torch.device(device)
    was_training = model.training
    model.to(dev).eval()
    outputs = []
    try:
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                batch = torch.from_numpy(x[i : i + batch_size]).to(dev)
                out = model.embed(batch) if embed else model.activate(model(batch))
                outputs.append(out.float().cpu().numpy())
    finally:
        model.train(was_training)
    if not outputs:
        width = model.feature_dim if embed else model.spec.num_classes
        return np.zeros((0, width), dtype=np.float32)
    return np.concatenate(outputs)


def predict_proba(
    model: Classifier, x: np.ndarray, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Class probabilities (N, num_classes) for images (N, C, H, W)."""
    return _batches(model, x, batch_size, device, embed=False)


def embed(
    model: Classifier, x: np.ndarray, *, batch_size: int = 256, device: str | torch.device = "cpu"
) -> np.ndarray:
    """Penultimate features (N, F) for images (N, C, H, W), e.g. for drift monitoring."""
    return _batches(model, x, batch_size, device, embed=True)
