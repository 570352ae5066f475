"""What evaluation does for each task, behind one interface the pipeline asks.

* multiclass: no thresholds (the prediction is the argmax); :func:`compute_metrics`; a
  confusion matrix and ROC curves (``confusion_matrix.png``, ``roc_curves.png``).
* multilabel: per-finding thresholds chosen on the validation split
  (:func:`~medops.evaluate.multilabel.choose_thresholds`);
  :func:`~medops.evaluate.multilabel.compute_multilabel_metrics` at those thresholds; one ROC
  panel per finding (``roc_curves.png``) and one 2x2 matrix per finding
  (``finding_confusion.png``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from medops.config.enums import Task
from medops.errors import DataError
from medops.evaluate.metrics import EvalMetrics, compute_metrics
from medops.evaluate.multilabel import (
    MultiLabelMetrics,
    choose_thresholds,
    compute_multilabel_metrics,
)
from medops.evaluate.plots import (
    plot_confusion_matrix,
    plot_finding_confusion,
    plot_finding_roc_curves,
    plot_roc_curves,
)


class Metrics(Protocol):
    """What both tasks' metrics offer."""

    @property
    def n(self) -> int: ...

    @property
    def auc(self) -> float: ...

    @property
    def class_names(self) -> list[str]: ...

    def to_flat_dict(self, prefix: str = "test_") -> dict[str, float]: ...

    def to_dict(self) -> dict[str, Any]: ...

    def to_json(self, indent: int | None = 2) -> str: ...


class TaskEvaluation(ABC):
    """Thresholds, metrics and plots of one task."""

    task: Task

    @abstractmethod
    def thresholds(self, y_val: np.ndarray, probs_val: np.ndarray,
                   classes: Sequence[str]) -> dict[str, float] | None:
        """Decision thresholds per output chosen on validation predictions; None when the task
        decides without them."""

    @abstractmethod
    def metrics(self, y: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                thresholds: Mapping[str, float] | None = None) -> Metrics:
        """Metrics of ``probs`` against targets ``y``."""

    @abstractmethod
    def plots(self, metrics: Metrics, y: np.ndarray, probs: np.ndarray,
              classes: Sequence[str], folder: Path) -> list[Path]:
        """Write the task's evaluation plots into ``folder``."""

    @abstractmethod
    def load_metrics(self, data: dict[str, Any]) -> Metrics:
        """Read what ``metrics(...).to_dict()`` wrote."""


class MultiClassEvaluation(TaskEvaluation):
    task = Task.MULTICLASS

    def thresholds(self, y_val: np.ndarray, probs_val: np.ndarray,
                   classes: Sequence[str]) -> dict[str, float] | None:
        return None

    def metrics(self, y: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                thresholds: Mapping[str, float] | None = None) -> EvalMetrics:
        return compute_metrics(y, probs, classes)

    def plots(self, metrics: Metrics, y: np.ndarray, probs: np.ndarray,
              classes: Sequence[str], folder: Path) -> list[Path]:
        if not isinstance(metrics, EvalMetrics):
            raise TypeError(f"multiclass plots need EvalMetrics, not {type(metrics).__name__}")
        return [plot_confusion_matrix(metrics, folder / "confusion_matrix.png"),
                plot_roc_curves(y, probs, classes, folder / "roc_curves.png")]

    def load_metrics(self, data: dict[str, Any]) -> EvalMetrics:
        return EvalMetrics.from_dict(data)


class MultiLabelEvaluation(TaskEvaluation):
    task = Task.MULTILABEL

    def thresholds(self, y_val: np.ndarray, probs_val: np.ndarray,
                   classes: Sequence[str]) -> dict[str, float] | None:
        return dict(zip(classes, choose_thresholds(y_val, probs_val, classes), strict=True))

    def metrics(self, y: np.ndarray, probs: np.ndarray, classes: Sequence[str],
                thresholds: Mapping[str, float] | None = None) -> MultiLabelMetrics:
        if thresholds is not None:
            unknown = sorted(set(thresholds) - set(classes))
            if unknown:
                raise DataError(f"thresholds for {unknown}, which are not among the findings "
                                f"{list(classes)}")
        cuts = None if thresholds is None else [float(thresholds.get(c, 0.5)) for c in classes]
        return compute_multilabel_metrics(y, probs, classes, cuts)

    def plots(self, metrics: Metrics, y: np.ndarray, probs: np.ndarray,
              classes: Sequence[str], folder: Path) -> list[Path]:
        if not isinstance(metrics, MultiLabelMetrics):
            raise TypeError(
                f"multilabel plots need MultiLabelMetrics, not {type(metrics).__name__}")
        cuts = [f.threshold for f in metrics.per_finding]
        return [plot_finding_roc_curves(y, probs, classes, folder / "roc_curves.png",
                                        thresholds=cuts),
                plot_finding_confusion(metrics, folder / "finding_confusion.png")]

    def load_metrics(self, data: dict[str, Any]) -> MultiLabelMetrics:
        return MultiLabelMetrics.from_dict(data)


_EVALUATIONS: dict[Task, TaskEvaluation] = {Task.MULTICLASS: MultiClassEvaluation(),
                                            Task.MULTILABEL: MultiLabelEvaluation()}


def task_evaluation(task: Task) -> TaskEvaluation:
    """The evaluation rules of ``task``."""
    return _EVALUATIONS[Task(task)]
