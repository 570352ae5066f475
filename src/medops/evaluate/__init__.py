"""Evaluation: test-set metrics (AUC, accuracy, per-class; per-finding for multi-label models),
decision thresholds of multi-label models, and their plots. :func:`task_evaluation` gives the
rules of a task."""

from medops.evaluate.metrics import ClassMetrics, EvalMetrics, compute_metrics, metric_key
from medops.evaluate.multilabel import (
    DEFAULT_THRESHOLD,
    FindingMetrics,
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
from medops.evaluate.tasks import Metrics, TaskEvaluation, task_evaluation

__all__ = [
    "DEFAULT_THRESHOLD",
    "ClassMetrics",
    "EvalMetrics",
    "FindingMetrics",
    "Metrics",
    "MultiLabelMetrics",
    "TaskEvaluation",
    "choose_thresholds",
    "compute_metrics",
    "compute_multilabel_metrics",
    "metric_key",
    "plot_confusion_matrix",
    "plot_finding_confusion",
    "plot_finding_roc_curves",
    "plot_roc_curves",
    "task_evaluation",
]
