"""Live quality from feedback labels, against the version's own test metrics.

A metric counts as degraded when it is *significantly* below ``test value - max_drop``: a
one-sided test at ``alpha`` (Bonferroni over the metrics tested), not a bare comparison, so
fifty labels do not raise an alarm from sampling noise alone. Accuracy and per-class recall
are proportions (exact binomial test); the AUC uses the Hanley-McNeil standard error (for
several classes, the macro mean of one-vs-rest AUCs with their errors combined as independent).
Recalls of classes with fewer than ``MIN_CLASS_LABELS`` labels in the window are not tested.

A multi-label model's feedback labels are finding lists (``A|B``, ``No Finding``). Per finding
the live ROC-AUC, and the precision, recall and F1 of the findings called positive at the
thresholds stored with the model; over the findings the macro AUC (mean of the findings whose
AUC is defined: both positives and negatives among the labels), the micro AUC (every
image-finding pair pooled) and the macro F1. Tested against the version's test metrics: the
macro AUC (errors combined as for several classes), and each finding's AUC and recall once it
has ``MIN_CLASS_LABELS`` positives (and, for the AUC, as many negatives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

from medops.config.enums import Task
from medops.data.labels import label_task, parse_findings
from medops.errors import LabelError
from medops.evaluate.metrics import compute_metrics, metric_key

MIN_CLASS_LABELS = 10
#: The live figures a monitor check logs to MLflow and its report leads with.
LIVE_METRICS = ("accuracy", "auc", "balanced_accuracy", "macro_auc", "micro_auc", "f1_macro")


@dataclass
class MetricCheck:
    name: str  # accuracy, auc, recall_<class>; macro_auc, auc_<finding>, recall_<finding>
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


@dataclass(frozen=True)
class FindingQuality:
    """Live figures of one finding of a multi-label model."""

    name: str
    n: int  # labelled images
    positives: int  # of them with this finding
    threshold: float
    auc: float  # NaN without both positives and negatives
    precision: float
    recall: float
    f1: float
    reference_auc: float | None = None  # the version's test AUC of this finding

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "positives": self.positives,
                "threshold": self.threshold, "auc": _num(self.auc),
                "precision": _num(self.precision), "recall": _num(self.recall),
                "f1": _num(self.f1), "reference_auc": _num(self.reference_auc)}


@dataclass
class QualityReport:
    n_labelled: int
    min_labels: int
    max_drop: float
    alpha: float
    live: dict[str, float] = field(default_factory=dict)
    checks: list[MetricCheck] = field(default_factory=list)
    findings: list[FindingQuality] = field(default_factory=list)  # multi-label models

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
                "degraded": [c.name for c in self.degraded],
                "findings": [f.to_dict() for f in self.findings]}


def assess(labels: list[str | None], probabilities: np.ndarray, classes: list[str],
           reference: dict[str, float], *, max_drop: float, min_labels: int,
           alpha: float, task: Task = Task.MULTICLASS,
           thresholds: list[float] | None = None) -> QualityReport:
    """Compare the rows that have a known ``label`` with ``reference`` (``test_accuracy``,
    ``test_auc``, ``test_recall_<class>`` ...); labels outside ``classes`` are ignored.
    A multi-label model's rows are read as finding lists, decided at ``thresholds`` (0.5 where
    None), and compared with ``test_macro_auc``, ``test_auc_<finding>`` and
    ``test_recall_<finding>``."""
    if label_task(task).multilabel:
        return _assess_findings(labels, probabilities, classes, reference, max_drop=max_drop,
                                min_labels=min_labels, alpha=alpha, thresholds=thresholds)
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
    report.checks = _share(checks, alpha)
    return report


def _share(checks: list[MetricCheck], alpha: float) -> list[MetricCheck]:
    for c in checks:
        c.threshold = alpha / len(checks)
    return checks


def _assess_findings(labels: list[str | None], probabilities: np.ndarray, classes: list[str],
                     reference: dict[str, float], *, max_drop: float, min_labels: int,
                     alpha: float, thresholds: list[float] | None) -> QualityReport:
    known = set(classes)
    rows: list[int] = []
    for i, lab in enumerate(labels):
        try:
            if lab is not None and set(parse_findings(lab)) <= known:
                rows.append(i)
        except LabelError:
            continue  # not a finding list: ignored, as a class outside the model's
    report = QualityReport(len(rows), min_labels, max_drop, alpha)
    if not rows:
        return report
    y = label_task(Task.MULTILABEL).targets([str(labels[i]) for i in rows], classes) > 0.5
    probs = np.asarray(probabilities, dtype=np.float64)[rows]
    cut = np.full(len(classes), 0.5) if thresholds is None else np.asarray(thresholds, float)
    pred = probs >= cut
    report.findings = [_finding(name, y[:, k], probs[:, k], pred[:, k], float(cut[k]),
                                reference.get(f"test_auc_{metric_key(name)}"))
                       for k, name in enumerate(classes)]
    aucs = [f.auc for f in report.findings if math.isfinite(f.auc)]
    macro_auc = float(np.mean(aucs)) if aucs else math.nan
    seen = [f.f1 for k, f in enumerate(report.findings) if y[:, k].any() or pred[:, k].any()]
    pooled = y.reshape(-1)
    micro_auc = float(roc_auc_score(pooled, probs.reshape(-1))) \
        if 0 < pooled.sum() < pooled.size else math.nan
    report.live = {"macro_auc": macro_auc, "micro_auc": micro_auc,
                   "f1_macro": float(np.mean(seen)) if seen else math.nan}
    for f in report.findings:
        key = metric_key(f.name)
        report.live |= {f"auc_{key}": f.auc, f"f1_{key}": f.f1, f"recall_{key}": f.recall}
    if not report.evaluated:
        return report
    checks: list[MetricCheck] = []
    ref_macro = reference.get("test_macro_auc", reference.get("test_auc"))
    if ref_macro is not None and math.isfinite(macro_auc):
        errors = [_hanley_mcneil(f.auc, f.positives, f.n - f.positives)
                  for f in report.findings if math.isfinite(f.auc)]
        se = math.sqrt(sum(e * e for e in errors)) / len(errors)
        checks.append(_normal_check("macro_auc", macro_auc, se, len(rows), ref_macro,
                                    max_drop))
    for k, f in enumerate(report.findings):
        key = metric_key(f.name)
        negatives = f.n - f.positives
        if f.reference_auc is not None and min(f.positives, negatives) >= MIN_CLASS_LABELS:
            checks.append(_normal_check(f"auc_{key}", f.auc,
                                        _hanley_mcneil(f.auc, f.positives, negatives), f.n,
                                        f.reference_auc, max_drop))
        ref_recall = reference.get(f"test_recall_{key}")
        if ref_recall is not None and f.positives >= MIN_CLASS_LABELS:
            checks.append(_proportion(f"recall_{key}", int((pred[:, k] & y[:, k]).sum()),
                                      f.positives, ref_recall, max_drop))
    report.checks = _share(checks, alpha)
    return report


def _finding(name: str, y: np.ndarray, p: np.ndarray, pred: np.ndarray, threshold: float,
             reference_auc: float | None) -> FindingQuality:
    positives = int(y.sum())
    tp = int((pred & y).sum())
    called = int(pred.sum())
    precision = tp / called if called else 0.0
    recall = tp / positives if positives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    auc = float(roc_auc_score(y, p)) if 0 < positives < len(y) else math.nan
    return FindingQuality(name, len(y), positives, threshold, auc, precision, recall, f1,
                          reference_auc)


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
    return _normal_check("auc", auc, se, len(y), reference, max_drop)


def _normal_check(name: str, value: float, se: float, n: int, reference: float,
                  max_drop: float) -> MetricCheck:
    """One-sided z-test of ``value >= reference - max_drop`` with standard error ``se``."""
    floor = reference - max_drop
    if not math.isfinite(se) or floor <= 0.0:
        p_value = 1.0
    elif se > 0:
        p_value = float(stats.norm.cdf((value - floor) / se))
    else:
        p_value = 1.0 if value >= floor else 0.0
    return MetricCheck(name, value, reference, n, p_value)


def _hanley_mcneil(auc: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC (Hanley & McNeil, 1982)."""
    if n_pos == 0 or n_neg == 0:
        return math.inf
    a = min(max(auc, 1e-6), 1 - 1e-6)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) \
        / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def _num(v: float | None) -> float | None:
    return None if v is None or v != v else float(v)
