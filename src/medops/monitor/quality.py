"""Live quality from feedback labels, against the version's own test metrics.

A metric counts as degraded when it is *significantly* below ``test value - max_drop``: a
one-sided test at ``alpha`` (Bonferroni over the metrics tested), not a bare comparison, so
fifty labels do not raise an alarm from sampling noise alone. Accuracy and per-class recall
are proportions (exact binomial test); the AUC uses the Hanley-McNeil standard error (for
several classes, the macro mean of one-vs-rest AUCs with their errors combined as independent).
Recalls of classes with fewer than ``MIN_CLASS_LABELS`` labels in the window are not tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from medops.evaluate.metrics import compute_metrics, metric_key

MIN_CLASS_LABELS = 10


@dataclass
class MetricCheck:
    name: str  # accuracy, auc, recall_<class>
    live: float
    reference: float
    n: int
    p_value: float  # of "live metric >= reference - max_drop"
    threshold: float = float("nan")

    @property
    def drop(self) -> float:
        return self.reference - self.live

    @property
    def degraded(self) -> bool:
        return self.p_value < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "live": _num(self.live), "reference": _num(self.reference),
                "drop": _num(self.drop), "n": self.n, "p_value": _num(self.p_value),
                "threshold": _num(self.threshold), "degraded": self.degraded}


@dataclass
class QualityReport:
    n_labelled: int
    min_labels: int
    max_drop: float
    alpha: float
    live: dict[str, float] = field(default_factory=dict)
    checks: list[MetricCheck] = field(default_factory=list)

    @property
    def evaluated(self) -> bool:
        return self.n_labelled >= self.min_labels

    @property
    def degraded(self) -> list[MetricCheck]:
        return [c for c in self.checks if c.degraded]

    def to_dict(self) -> dict[str, Any]:
        return {"n_labelled": self.n_labelled, "min_labels": self.min_labels,
                "max_drop": self.max_drop, "evaluated": self.evaluated,
                "live": {k: _num(v) for k, v in self.live.items()},
                "checks": [c.to_dict() for c in self.checks],
                "degraded": [c.name for c in self.degraded]}


def assess(labels: list[str | None], probabilities: np.ndarray, classes: list[str],
           reference: dict[str, float], *, max_drop: float, min_labels: int,
           alpha: float) -> QualityReport:
    """Compare the rows that have a known ``label`` with ``reference`` (``test_accuracy``,
    ``test_auc``, ``test_recall_<class>`` ...); labels outside ``classes`` are ignored."""
    index = {c: i for i, c in enumerate(classes)}
    rows = [i for i, lab in enumerate(labels) if lab is not None and lab in index]
    report = QualityReport(len(rows), min_labels, max_drop, alpha)
    if not rows:
        return report
    y = np.array([index[str(labels[i])] for i in rows], dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)[rows]
    metrics = compute_metrics(y, probs, classes)
    report.live = {k.removeprefix("test_"): v for k, v in metrics.to_flat_dict().items()
                   if not k.startswith(("test_support_", "test_precision_", "test_f1_"))}
    if not report.evaluated:
        return report
    pred = probs.argmax(axis=1)
    checks: list[MetricCheck] = []
    ref_acc = reference.get("test_accuracy")
    if ref_acc is not None:
        checks.append(_proportion("accuracy", int((pred == y).sum()), len(y), ref_acc, max_drop))
    for k, name in enumerate(classes):
        ref_recall = reference.get(f"test_recall_{metric_key(name)}")
        support = int((y == k).sum())
        if ref_recall is not None and support >= MIN_CLASS_LABELS:
            checks.append(_proportion(f"recall_{metric_key(name)}",
                                      int(((pred == k) & (y == k)).sum()), support,
                                      ref_recall, max_drop))
    ref_auc = reference.get("test_auc")
    if ref_auc is not None and math.isfinite(metrics.auc):
        checks.append(_auc_check(metrics.auc, y, len(classes), ref_auc, max_drop))
    for c in checks:
        c.threshold = alpha / len(checks)
    report.checks = checks
    return report


def _proportion(name: str, hits: int, n: int, reference: float, max_drop: float) -> MetricCheck:
    floor = reference - max_drop
    if floor <= 0.0:
        p_value = 1.0  # nothing can fall below a floor of zero
    else:
        p_value = float(stats.binomtest(hits, n, min(floor, 1.0), alternative="less").pvalue)
    return MetricCheck(name, hits / n, reference, n, p_value)


def _auc_check(auc: float, y: np.ndarray, n_classes: int, reference: float,
               max_drop: float) -> MetricCheck:
    if n_classes == 2:
        se = _hanley_mcneil(auc, int((y == 1).sum()), int((y == 0).sum()))
    else:
        present = [k for k in range(n_classes) if 0 < (y == k).sum() < len(y)]
        errors = [_hanley_mcneil(auc, int((y == k).sum()), int((y != k).sum()))
                  for k in present]
        se = math.sqrt(sum(e * e for e in errors)) / max(len(errors), 1)
    floor = reference - max_drop
    if not math.isfinite(se) or floor <= 0.0:
        p_value = 1.0
    elif se > 0:
        p_value = float(stats.norm.cdf((auc - floor) / se))
    else:
        p_value = 1.0 if auc >= floor else 0.0
    return MetricCheck("auc", auc, reference, len(y), p_value)


def _hanley_mcneil(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC (Hanley & McNeil, 1982)."""
    if n_pos == 0 or n_neg == 0:
        return math.inf
    a = min(max(auc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) \
        / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _num(v: float) -> float | None:
    return None if v != v else float(v)
