"""Validation scoring inside the training loop, and seeding.

The AUC here follows the same convention as :mod:`medops.evaluate` (which training may not
import): binary ROC-AUC of class 1, or the macro one-vs-rest mean over the classes that have
both positives and negatives in ``y``; NaN when no class does. For a multi-label model, the
macro mean of the per-finding ROC-AUCs over the findings that have both positives and
negatives in ``y`` (:func:`macro_finding_auc`); NaN when no finding does.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from medops.train.classifier import Classifier

if TYPE_CHECKING:
    from medops.train.task import TrainTask


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


def macro_finding_auc(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean ROC-AUC over the findings (columns of multi-hot ``y`` (N, K), positive where
    >= 0.5) that have both positives and negatives; NaN when none has."""
    per_finding = []
    for k in range(probs.shape[1]):
        positives = y[:, k] >= 0.5
        if positives.all() or not positives.any():
            continue
        per_finding.append(float(roc_auc_score(positives, probs[:, k])))
    return float(np.mean(per_finding)) if per_finding else math.nan


def validate(
    model: Classifier,
    x_all: np.ndarray,
    y_all: np.ndarray,
    *,
    device: torch.device,
    memory_format: torch.memory_format,
    batch_size: int,
    loss_weight: torch.Tensor | None,
    task: TrainTask,
) -> ValScore:
    """Score ``model`` on images ``x_all`` with targets ``y_all`` by the rules of ``task`` (loss,
    probabilities, AUC, accuracy); leaves it in eval mode.

    The images are scored as given, without the flip average the model applies in eval mode
    (``spec.flip_tta``): that would double the cost of a pass run after every epoch, and over
    ten seeds of two data sets the epochs it picked were no better (docs/benchmarks.md)."""
    if len(y_all) == 0:
        return ValScore(math.nan, math.nan, math.nan)
    out = val_logits(model, x_all, device=device, memory_format=memory_format,
                     batch_size=batch_size)
    return score_logits(out, y_all, device=device, loss_weight=loss_weight, task=task)


def val_logits(
    model: Classifier,
    x_all: np.ndarray,
    *,
    device: torch.device,
    memory_format: torch.memory_format,
    batch_size: int,
) -> torch.Tensor:
    """``model``'s single-view logits (float32, on ``device``) for images ``x_all``; leaves it
    in eval mode."""
    model.eval()
    logits = []
    with torch.inference_mode():
        for i in range(0, len(x_all), batch_size):
            x = torch.from_numpy(x_all[i : i + batch_size]).to(device)
            logits.append(
                model.single_view_logits(x.contiguous(memory_format=memory_format)).float()
            )
        return torch.cat(logits)


def score_logits(
    out: torch.Tensor,
    y_all: np.ndarray,
    *,
    device: torch.device,
    loss_weight: torch.Tensor | None,
    task: TrainTask,
) -> ValScore:
    """Loss, AUC and accuracy of logits ``out`` for targets ``y_all``."""
    with torch.inference_mode():
        y = torch.from_numpy(y_all).to(device)
        loss = float(task.val_loss(out, y, loss_weight).item())
        probs = task.probabilities(out).cpu().numpy()
    return ValScore(loss=loss, auc=task.auc(y_all, probs), accuracy=task.accuracy(y_all, probs))
