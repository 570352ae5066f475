"""What training asks of the task (:class:`~medops.config.enums.Task`): the shape of the targets,
the loss and its imbalance weights, how mixup mixes it, and the validation score.

The trainer holds one :class:`TrainTask`, chosen by :func:`train_task` from ``spec.task``, and
asks it instead of testing the task itself.

* **multiclass** — targets are class indices (N,) int64. The training loss is cross-entropy with
  label smoothing :data:`LABEL_SMOOTHING`, weighted by inverse class frequency
  (:func:`class_weights`) when ``train.class_weighting``; mixup mixes the losses of the two
  label sets. Validation: unsmoothed weighted cross-entropy, the ROC-AUC of
  :func:`~medops.train.scoring.auc_score`, accuracy of the argmax.
* **multilabel** — targets are a multi-hot matrix (N, K) float32 (values in [0, 1]). The loss is
  binary cross-entropy with logits, one sigmoid per finding, with a per-finding ``pos_weight``
  of negatives / positives in the training set (:func:`finding_pos_weights`, clipped to
  :data:`POS_WEIGHT_RANGE`) when ``train.class_weighting``. Mixup mixes the targets (BCE is
  linear in its target, so this equals mixing the two losses). No label smoothing: smoothing
  pulls every target toward 0.5, and the per-finding sigmoid outputs are what the decision
  thresholds are chosen on and what monitoring compares. Validation: the same loss, the macro
  ROC-AUC over the findings that have positives and negatives in the validation set
  (:func:`~medops.train.scoring.macro_finding_auc`), and the fraction of (image, finding)
  decisions right at probability 0.5 as accuracy.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.nn.functional as F

from medops.config.enums import Task
from medops.errors import DataError
from medops.train.scoring import auc_score, macro_finding_auc

#: Label smoothing of the multiclass training loss (not of the validation loss): on the small
#: sets medops targets it made validation and test AUC steadier and higher (docs/benchmarks.md).
LABEL_SMOOTHING = 0.1

#: The range a finding's ``pos_weight`` (negatives / positives) is clipped to: a finding with a
#: handful of positives among thousands of images would otherwise get a weight in the hundreds,
#: and gradients that a few images dominate.
POS_WEIGHT_RANGE = (0.02, 50.0)


def class_weights(y: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced set has weights 1; 0 for absent classes."""
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    w = np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def finding_pos_weights(y: np.ndarray) -> torch.Tensor:
    """Per finding: negatives / positives in multi-hot ``y`` (N, K), clipped to
    :data:`POS_WEIGHT_RANGE`; 1 for a finding with no positives or no negatives (its positive
    term is then absent, or all there is)."""
    y = np.asarray(y, dtype=np.float64)
    positives = y.sum(axis=0)
    negatives = len(y) - positives
    ratio = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
    ratio = np.where((positives > 0) & (negatives > 0), ratio, 1.0)
    return torch.tensor(np.clip(ratio, *POS_WEIGHT_RANGE), dtype=torch.float32)


class TrainTask(ABC):
    """The task-dependent pieces of training; see the module docstring for each task's rules."""

    task: Task

    @abstractmethod
    def check_targets(self, y: np.ndarray, num_classes: int) -> None:
        """Raise a :class:`DataError` when ``y`` is not a target array of this task."""

    @abstractmethod
    def loss_weight(self, y: np.ndarray, num_classes: int) -> torch.Tensor:
        """The loss's imbalance weights computed on the training targets ``y``."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, y: torch.Tensor,
             weight: torch.Tensor | None) -> torch.Tensor:
        """The training loss of one batch."""

    @abstractmethod
    def mixup_loss(self, logits: torch.Tensor, y: torch.Tensor, partner: torch.Tensor,
                   lam: float, weight: torch.Tensor | None) -> torch.Tensor:
        """The training loss of a batch whose images are ``lam * x + (1 - lam) * x[partner]``."""

    @abstractmethod
    def val_loss(self, logits: torch.Tensor, y: torch.Tensor,
                 weight: torch.Tensor | None) -> torch.Tensor:
        """The validation loss (never smoothed)."""

    @abstractmethod
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes or a sigmoid per finding."""

    @abstractmethod
    def auc(self, y: np.ndarray, probs: np.ndarray) -> float:
        """The validation score early stopping and averaging follow; NaN when undefined."""

    @abstractmethod
    def accuracy(self, y: np.ndarray, probs: np.ndarray) -> float:
        """The validation accuracy reported per epoch."""

    @abstractmethod
    def auc_defined(self, y: np.ndarray) -> bool:
        """Whether :meth:`auc` can be defined on targets ``y``."""


class MultiClassTask(TrainTask):
    task = Task.MULTICLASS

    def check_targets(self, y: np.ndarray, num_classes: int) -> None:
        if y.ndim != 1:
            raise DataError(
                f"a multiclass model takes class indices of shape (N,); got targets of shape "
                f"{y.shape} (for findings per image set task: multilabel)")
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(
                f"labels must be class indices in [0, {num_classes}); "
                f"found {sorted(set(np.unique(y).tolist()))}"
            )

    def loss_weight(self, y: np.ndarray, num_classes: int) -> torch.Tensor:
        return class_weights(y, num_classes)

    def loss(self, logits: torch.Tensor, y: torch.Tensor,
             weight: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=LABEL_SMOOTHING)

    def mixup_loss(self, logits: torch.Tensor, y: torch.Tensor, partner: torch.Tensor,
                   lam: float, weight: torch.Tensor | None) -> torch.Tensor:
        return lam * self.loss(logits, y, weight) + (1 - lam) * self.loss(logits, y[partner],
                                                                          weight)

    def val_loss(self, logits: torch.Tensor, y: torch.Tensor,
                 weight: torch.Tensor | None) -> torch.Tensor:
        return F.cross_entropy(logits, y, weight=weight)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def auc(self, y: np.ndarray, probs: np.ndarray) -> float:
        return auc_score(y, probs)

    def accuracy(self, y: np.ndarray, probs: np.ndarray) -> float:
        return float((probs.argmax(axis=1) == y).mean())

    def auc_defined(self, y: np.ndarray) -> bool:
        return len(np.unique(y)) >= 2


class MultiLabelTask(TrainTask):
    task = Task.MULTILABEL

    def check_targets(self, y: np.ndarray, num_classes: int) -> None:
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise DataError(
                f"a multilabel model with {num_classes} finding(s) takes a multi-hot target "
                f"matrix of shape (N, {num_classes}); got targets of shape {y.shape}")
        if len(y) and not (np.isfinite(y).all() and y.min() >= 0 and y.max() <= 1):
            raise DataError(
                f"multi-label targets must lie in [0, 1] (1: the finding is present); found "
                f"values from {np.nanmin(y)} to {np.nanmax(y)}")

    def loss_weight(self, y: np.ndarray, num_classes: int) -> torch.Tensor:
        return finding_pos_weights(y)

    def loss(self, logits: torch.Tensor, y: torch.Tensor,
             weight: torch.Tensor | None) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, y, pos_weight=weight)

    def mixup_loss(self, logits: torch.Tensor, y: torch.Tensor, partner: torch.Tensor,
                   lam: float, weight: torch.Tensor | None) -> torch.Tensor:
        return self.loss(logits, torch.lerp(y[partner], y, lam), weight)

    def val_loss(self, logits: torch.Tensor, y: torch.Tensor,
                 weight: torch.Tensor | None) -> torch.Tensor:
        return self.loss(logits, y, weight)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def auc(self, y: np.ndarray, probs: np.ndarray) -> float:
        return macro_finding_auc(y, probs)

    def accuracy(self, y: np.ndarray, probs: np.ndarray) -> float:
        return float(((probs >= 0.5) == (y >= 0.5)).mean()) if y.size else math.nan

    def auc_defined(self, y: np.ndarray) -> bool:
        if not len(y):
            return False
        positives = (np.asarray(y) >= 0.5).sum(axis=0)
        return bool(((positives > 0) & (positives < len(y))).any())


_TASKS: dict[Task, TrainTask] = {Task.MULTICLASS: MultiClassTask(),
                                 Task.MULTILABEL: MultiLabelTask()}


def train_task(task: Task) -> TrainTask:
    """The training rules of ``task``."""
    return _TASKS[Task(task)]
