"""Validation scoring inside the training loop, and seeding.

The AUC here follows the same convention as :mod:`medops.evaluate` (which training may not
import): binary ROC-AUC of class 1, or the macro one-vs-rest mean over the classes that have
both positives and negatives in ``y``; NaN when no class does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from medops.train.classifier import Classifier


@dataclass(frozen=True)
class ValScore:
    """Validation loss, AUC and accuracy of one epoch (NaN when undefined)."""

    loss: float
    auc: float
    accuracy: float


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def auc_score(y: np.ndarray, probs: np.ndarray) -> float:
    """ROC-AUC: of class 1 for two classes, else macro one-vs-rest over the classes present."""
    num_classes = probs.shape[1]
    per_class = []
    for c in range(1 if num_classes == 2 else 0, num_classes):
        positives = y == c
        if positives.all() or not positives.any():
            continue
        per_class.append(float(roc_auc_score(positives, probs[:, c])))
        if num_classes == 2:
            break
    return float(np.mean(per_class)) if per_class else math.nan


def validate(
    model: Classifier,
    x_all: np.ndarray,
    y_all: np.ndarray,
    *,
    device: torch.device,
    memory_format: torch.memory_format,
    batch_size: int,
    loss_weight: torch.Tensor | None,
) -> ValScore:
    """Score ``model`` on images ``x_all`` with labels ``y_all``; leaves it in eval mode.

    The images are scored as given, without the flip average the model applies in eval mode
    (``spec.flip_tta``): that would double the cost of a pass run after every epoch, and over
    ten seeds of two data sets the epochs it picked were no better (docs/benchmarks.md)."""
    if len(y_all) == 0:
        return ValScore(math.nan, math.nan, math.nan)
    model.eval()
    logits = []
    with torch.inference_mode():
        for i in range(0, len(y_all), batch_size):
            x = torch.from_numpy(x_all[i : i + batch_size]).to(device)
            logits.append(
                model.single_view_logits(x.contiguous(memory_format=memory_format)).float()
            )
        out = torch.cat(logits)
        y = torch.from_numpy(y_all).to(device)
        loss = float(F.cross_entropy(out, y, weight=loss_weight).item())
        probs = torch.softmax(out, dim=1).cpu().numpy()
    accuracy = float((probs.argmax(axis=1) == y_all).mean())
    return ValScore(loss=loss, auc=auc_score(y_all, probs), accuracy=accuracy)
