"""Evaluation plots written as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), not
through ``pyplot``: no display is needed, no backend is switched for the whole process, and no
figure is left registered in pyplot's global figure list.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from medops.evaluate.metrics import EvalMetrics, one_vs_rest_auc
from medops.evaluate.multilabel import MultiLabelMetrics, finding_auc


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_confusion_matrix(
    metrics: EvalMetrics, path: Path, *, normalize: bool = False, title: str = "Confusion matrix"
) -> Path:
    """Draw the confusion matrix of ``metrics`` (rows: truth, columns: prediction) to ``path``.

    ``normalize`` shows each row as fractions of its true class (empty rows stay 0).
    """
    cm = np.asarray(metrics.confusion, dtype=np.float64)
    names = metrics.class_names
    if normalize:
        rows = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(names)
    side = max(4.0, 0.7 * k + 2.5)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = cm.max() / 2 if cm.size and cm.max() > 0 else 0.5
    for i in range(k):
        for j in range(k):
            text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
            color = "white" if cm[i, j] > threshold else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
    return _save(fig, path)


def plot_roc_curves(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    *,
    title: str = "ROC",
) -> Path:
    """Draw ROC curves to ``path``: class 1's for two classes, one-vs-rest per class otherwise.

    A class without positives or without negatives in ``y_true`` has no curve; the legend says so.
    """
    y_true = np.asarray(y_true).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    for c in [1] if k == 2 else range(k):
        name = class_names[c]
        auc = one_vs_rest_auc(y_true, probs, c)
        if np.isnan(auc):
            ax.plot([], [], label=f"{name} (undefined: one class only)")
            continue
        fpr, tpr, _ = roc_curve(y_true == c, probs[:, c])
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {auc:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title if k != 2 else f"{title}: {class_names[1]} vs {class_names[0]}")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _grid(k: int, cell: float) -> tuple[Figure, list[Any]]:
    cols = min(4, k)
    rows = -(-k // cols)
    fig = Figure(figsize=(cell * cols + 0.5, cell * rows + 0.6))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(k)]
    return fig, axes


def plot_finding_roc_curves(
    y_true: np.ndarray,
    probs: np.ndarray,
    findings: Sequence[str],
    path: Path,
    *,
    thresholds: Sequence[float] | None = None,
    title: str = "ROC per finding",
) -> Path:
    """Draw one small ROC plot per finding of a multi-label model to ``path``, each with its
    AUC and, where ``thresholds`` are given, the operating point of the finding's threshold.

    A finding without positives or without negatives in ``y_true`` has no curve; its panel says
    so.
    """
    truth = np.asarray(y_true, dtype=np.float64) >= 0.5
    probs = np.asarray(probs, dtype=np.float64)
    fig, axes = _grid(len(findings), 2.6)
    for j, (ax, name) in enumerate(zip(axes, findings, strict=True)):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.tick_params(labelsize=7)
        auc = finding_auc(truth[:, j], probs[:, j])
        if np.isnan(auc):
            ax.set_title(f"{name}\n(undefined: one class only)", fontsize=8)
            continue
        fpr, tpr, _ = roc_curve(truth[:, j], probs[:, j])
        ax.plot(fpr, tpr, linewidth=1.3)
        if thresholds is not None:
            hit = probs[:, j] >= thresholds[j]
            pos = truth[:, j]
            ax.plot([(hit & ~pos).sum() / (~pos).sum()], [(hit & pos).sum() / pos.sum()],
                    marker="o", color="black", markersize=4,
                    label=f"threshold {thresholds[j]:.2f}")
            ax.legend(loc="lower right", fontsize=6)
        ax.set_title(f"{name} (AUC {auc:.3f})", fontsize=8)
    fig.suptitle(title)
    fig.supxlabel("false positive rate", fontsize=9)
    fig.supylabel("true positive rate", fontsize=9)
    return _save(fig, path)


def plot_finding_confusion(metrics: MultiLabelMetrics, path: Path,
                           *, title: str = "Per finding at its threshold") -> Path:
    """Draw each finding's 2x2 confusion matrix (rows: truth, columns: prediction, absent
    first) at its threshold to ``path``."""
    fig, axes = _grid(len(metrics.per_finding), 2.2)
    for ax, f in zip(axes, metrics.per_finding, strict=True):
        cm = np.array([[f.tn, f.fp], [f.fn, f.tp]], dtype=np.float64)
        ax.imshow(cm, cmap="Blues", vmin=0)
        ax.set_xticks([0, 1], labels=["absent", "present"], fontsize=7)
        ax.set_yticks([0, 1], labels=["absent", "present"], fontsize=7)
        ax.set_title(f"{f.name} (thr {f.threshold:.2f})", fontsize=8)
        cut = cm.max() / 2 if cm.max() > 0 else 0.5
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > cut else "black")
    fig.suptitle(title)
    fig.supxlabel("predicted", fontsize=9)
    fig.supylabel("true", fontsize=9)
    return _save(fig, path)
