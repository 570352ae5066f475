"""Evaluation: test-set metrics (AUC, accuracy, per-class) and their plots."""

from medops.evaluate.metrics import ClassMetrics, EvalMetrics, compute_metrics, metric_key
from medops.evaluate.plots import plot_confusion_matrix, plot_roc_curves

__all__ = [
    "ClassMetrics",
    "EvalMetrics",
    "compute_metrics",
    "metric_key",
    "plot_confusion_matrix",
    "plot_roc_curves",
]
