"""Test-set metrics of a classifier, from its predicted class probabilities.

Conventions, chosen so that a small or lopsided test set never produces a warning or a crash:

* **AUC** — binary: ROC-AUC of class index 1 (the positive class). Multi-class: the macro mean
  of one-vs-rest ROC-AUCs over the classes that occur in ``y_true`` *and* are not the only class
  there (a class absent from ``y_true`` has no positives, so its AUC is undefined; it is left out
  of the mean rather than counted as 0 or 1). With fewer than two classes present the AUC is NaN.
  The per-class AUC of an absent class is NaN.
* **balanced accuracy** — the mean recall over the classes present in ``y_true``.
* **F1 macro** — the mean F1 over the classes present in ``y_true`` or predicted (as
  scikit-learn's default labels); an absent, never-predicted class is not averaged in.
* precision of a class never predicted, and recall of a class never present, are 0.
* predictions are the argmax of the probabilities.

NaN values become ``null`` in :meth:`EvalMetrics.to_json` and stay NaN in
:meth:`EvalMetrics.to_flat_dict` (MLflow stores NaN metrics).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from medops.config.enums import GateMetric
from medops.errors import DataError


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class (one-vs-rest)."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int  # images of this class in y_true
    auc: float  # one-vs-rest ROC-AUC; NaN when the class is absent (or the only one)


@dataclass(frozen=True)
class EvalMetrics:
    """Metrics of predictions against the truth; see the module docstring for conventions."""

    n: int
    accuracy: float
    balanced_accuracy: float
    auc: float
    f1_macro: float
    per_class: list[ClassMetrics]
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.per_class]

    def value(self, metric: GateMetric) -> float:
        """The value of a gate metric."""
        return float(getattr(self, GateMetric(metric).value))

    def to_flat_dict(self, prefix: str = "test_") -> dict[str, float]:
        """Flat, MLflow-friendly metrics: ``test_auc``, ``test_recall_<class>`` and so on."""
        out = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}balanced_accuracy": self.balanced_accuracy,
            f"{prefix}auc": self.auc,
            f"{prefix}f1_macro": self.f1_macro,
        }
        for c in self.per_class:
            out.update(flat_per_name(prefix, c.name, precision=c.precision, recall=c.recall,
                                     f1=c.f1, auc=c.auc, support=float(c.support)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, NaN as None."""
        return _nan_to_none(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """The metrics as JSON (NaN as null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalMetrics:
        """Read what :meth:`to_dict` wrote."""

        def num(v: float | None) -> float:
            return math.nan if v is None else float(v)

        return cls(
            n=int(d["n"]),
            accuracy=num(d["accuracy"]),
            balanced_accuracy=num(d["balanced_accuracy"]),
            auc=num(d["auc"]),
            f1_macro=num(d["f1_macro"]),
            per_class=[
                ClassMetrics(
                    name=str(c["name"]),
                    precision=num(c["precision"]),
                    recall=num(c["recall"]),
                    f1=num(c["f1"]),
                    support=int(c["support"]),
                    auc=num(c["auc"]),
                )
                for c in d["per_class"]
            ],
            confusion=[[int(v) for v in row] for row in d["confusion"]],
        )


def flat_per_name(prefix: str, name: str, **values: float) -> dict[str, float]:
    """One class's (or finding's) metrics as flat keys: ``<prefix><metric>_<name>``."""
    key = metric_key(name)
    return {f"{prefix}{metric}_{key}": value for metric, value in values.items()}


def metric_key(name: str) -> str:
    """A class name made safe for an MLflow metric key (letters, digits, ``_ - .``)."""
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name.strip()) or "_"


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def _check(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> None:
    k = len(class_names)
    if k < 2:
        raise DataError(f"need at least 2 class names (got {list(class_names)})")
    if probs.ndim != 2 or probs.shape[1] != k:
        raise DataError(
            f"probabilities must have shape (N, {k}) for {k} classes; got {probs.shape}"
        )
    if y_true.shape != (probs.shape[0],):
        raise DataError(f"{y_true.shape} labels do not match {probs.shape[0]} predictions")
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= k):
        raise DataError(f"labels must be class indices in [0, {k}); found {np.unique(y_true)}")


def one_vs_rest_auc(y_true: np.ndarray, probs: np.ndarray, cls: int) -> float:
    """ROC-AUC of class ``cls`` vs the rest; NaN when ``y_true`` lacks positives or negatives."""
    positives = y_true == cls
    if positives.all() or not positives.any():
        return math.nan
    return float(roc_auc_score(positives, probs[:, cls]))


def compute_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str]
) -> EvalMetrics:
    """Metrics of ``probs`` (N, K) against class indices ``y_true`` (N,)."""
    y_true = np.asarray(y_true).reshape(-1).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    _check(y_true, probs, class_names)
    k = len(class_names)
    y_pred = probs.argmax(axis=1) if len(y_true) else np.zeros(0, dtype=np.int64)
    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    class_auc = [one_vs_rest_auc(y_true, probs, c) for c in range(k)]
    present = support > 0
    seen = present | (predicted > 0)
    if k == 2:
        auc = class_auc[1]
    else:
        defined = [a for a in class_auc if not math.isnan(a)]
        auc = float(np.mean(defined)) if len(defined) >= 2 else math.nan
    n = len(y_true)
    return EvalMetrics(
        n=n,
        accuracy=float(tp.sum() / n) if n else math.nan,
        balanced_accuracy=float(recall[present].mean()) if present.any() else math.nan,
        auc=auc,
        f1_macro=float(f1[seen].mean()) if seen.any() else math.nan,
        per_class=[
            ClassMetrics(
                name=str(class_names[c]),
                precision=float(precision[c]),
                recall=float(recall[c]),
                f1=float(f1[c]),
                support=int(support[c]),
                auc=class_auc[c],
            )
            for c in range(k)
        ],
        confusion=cm.tolist(),
    )
