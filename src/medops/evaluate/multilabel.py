"""Test-set metrics of a multi-label model (a sigmoid per finding), and its decision thresholds.

``y_true`` is a multi-hot matrix (N, K) (a finding is present where the value is >= 0.5), the
probabilities (N, K) one sigmoid output per finding.

Conventions, as :mod:`medops.evaluate.metrics` for multi-class models, so that a small or
lopsided test set never produces a warning or a crash:

* **per-finding AUC** — the ROC-AUC of the finding's probability against its presence; NaN when
  the finding has no positive or no negative image in ``y_true``.
* **macro AUC** — the mean of the per-finding AUCs that are defined; NaN when none is. The gate
  metric ``auc`` of a multi-label model is this value (``test_auc`` and ``test_macro_auc``).
* **micro AUC** — the ROC-AUC of all (image, finding) pairs pooled; NaN when the pool lacks
  positives or negatives.
* **thresholds** — a finding is predicted present when its probability is >= its threshold.
  :func:`choose_thresholds` picks them on the *validation* split, per finding, as the cut that
  maximises that finding's F1 there (the harmonic mean of precision and recall suits findings
  rarer than their absence; Youden's J would weigh every negative image as much as every
  positive one). The threshold lies halfway between the lowest probability it calls positive
  and the next lower one seen, so a probability a hair under the lowest positive still counts
  as in between; among cuts of equal F1 the highest wins (fewer false alarms for the same F1).
  A finding without positives or without negatives in the validation split keeps
  :data:`DEFAULT_THRESHOLD`.
* **precision, recall, F1** per finding at its threshold: precision of a finding never
  predicted and recall of a finding never present are 0, as is the F1 when both are 0.
* **F1 macro** — the mean F1 over the findings present in ``y_true`` or predicted (as
  scikit-learn's ``f1_score(average="macro")`` with those labels); NaN when there are none.

NaN values become ``null`` in :meth:`MultiLabelMetrics.to_json`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score

from medops.config.enums import GateMetric
from medops.errors import DataError
from medops.evaluate.metrics import _nan_to_none, flat_per_name

#: The threshold of a finding whose validation data cannot pick one.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class FindingMetrics:
    """Metrics of one finding at its threshold; the counts are of images."""

    name: str
    auc: float
    precision: float
    recall: float
    f1: float
    support: int  # images with the finding in y_true
    threshold: float
    tp: int
    fp: int
    fn: int
    tn: int


@dataclass(frozen=True)
class MultiLabelMetrics:
    """Metrics of multi-label predictions against the truth; conventions in the module
    docstring."""

    n: int
    macro_auc: float
    micro_auc: float
    f1_macro: float
    per_finding: list[FindingMetrics]

    @property
    def auc(self) -> float:
        """The macro AUC (what ``gate.metric: auc`` means for a multi-label model)."""
        return self.macro_auc

    @property
    def class_names(self) -> list[str]:
        return [f.name for f in self.per_finding]

    @property
    def thresholds(self) -> dict[str, float]:
        return {f.name: f.threshold for f in self.per_finding}

    def finding(self, name: str) -> FindingMetrics:
        for f in self.per_finding:
            if f.name == name:
                return f
        raise DataError(f"no finding {name!r}; the findings are {self.class_names}")

    def value(self, metric: GateMetric, finding: str | None = None) -> float:
        """The value of a gate metric: ``auc``/``macro_auc``, ``micro_auc``, ``f1_macro``, or
        with ``finding`` that finding's AUC."""
        metric = GateMetric(metric)
        if finding is not None:
            if metric is not GateMetric.AUC:
                raise DataError(f"a finding's gate metric is its auc, not {metric}")
            return self.finding(finding).auc
        if metric in (GateMetric.AUC, GateMetric.MACRO_AUC):
            return self.macro_auc
        if metric is GateMetric.MICRO_AUC:
            return self.micro_auc
        if metric is GateMetric.F1_MACRO:
            return self.f1_macro
        raise DataError(f"{metric} is not a metric of a multi-label model; use auc (the macro "
                        "AUC over findings), micro_auc or f1_macro")

    def to_flat_dict(self, prefix: str = "test_") -> dict[str, float]:
        """Flat, MLflow-friendly metrics: ``test_macro_auc``, ``test_auc_<finding>`` and so on
        (``test_auc`` is the macro AUC too, the key multi-class models have)."""
        out = {
            f"{prefix}auc": self.macro_auc,
            f"{prefix}macro_auc": self.macro_auc,
            f"{prefix}micro_auc": self.micro_auc,
            f"{prefix}f1_macro": self.f1_macro,
        }
        for f in self.per_finding:
            out.update(flat_per_name(prefix, f.name, auc=f.auc, precision=f.precision,
                                     recall=f.recall, f1=f.f1, support=float(f.support),
                                     threshold=f.threshold))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, NaN as None."""
        return {"task": "multilabel", **_nan_to_none(asdict(self))}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MultiLabelMetrics:
        """Read what :meth:`to_dict` wrote."""

        def num(v: float | None) -> float:
            return math.nan if v is None else float(v)

        return cls(
            n=int(d["n"]), macro_auc=num(d["macro_auc"]), micro_auc=num(d["micro_auc"]),
            f1_macro=num(d["f1_macro"]),
            per_finding=[
                FindingMetrics(
                    name=str(f["name"]), auc=num(f["auc"]), precision=num(f["precision"]),
                    recall=num(f["recall"]), f1=num(f["f1"]), support=int(f["support"]),
                    threshold=float(f["threshold"]), tp=int(f["tp"]), fp=int(f["fp"]),
                    fn=int(f["fn"]), tn=int(f["tn"]))
                for f in d["per_finding"]
            ],
        )


def _check(y_true: np.ndarray, probs: np.ndarray, findings: Sequence[str]) -> None:
    k = len(findings)
    if k < 1:
        raise DataError("need at least 1 finding name")
    if probs.ndim != 2 or probs.shape[1] != k:
        raise DataError(
            f"probabilities must have shape (N, {k}) for {k} findings; got {probs.shape}")
    if y_true.shape != probs.shape:
        raise DataError(f"multi-hot labels of shape {y_true.shape} do not match predictions "
                        f"of shape {probs.shape}")


def _truth(y_true: np.ndarray) -> np.ndarray:
    return np.asarray(y_true, dtype=np.float64) >= 0.5


def finding_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC of one finding; NaN when ``truth`` lacks positives or negatives."""
    if truth.all() or not truth.any():
        return math.nan
    return float(roc_auc_score(truth, scores))


def choose_thresholds(y_true: np.ndarray, probs: np.ndarray,
                      findings: Sequence[str]) -> list[float]:
    """Per finding, the threshold that maximises its F1 on (validation) data; see the module
    docstring for the rule and its fallback."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    _check(y_true, probs, findings)
    truth = _truth(y_true)
    out = []
    for k in range(len(findings)):
        t, p = truth[:, k], probs[:, k]
        if t.all() or not t.any():
            out.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(t, p)
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)[-1]  # cuts ascend: the highest of ties
        cut = float(cuts[best])
        below = p[p < cut]
        out.append((cut + float(below.max())) / 2 if below.size else cut)
    return out


def compute_multilabel_metrics(y_true: np.ndarray, probs: np.ndarray, findings: Sequence[str],
                               thresholds: Sequence[float] | None = None) -> MultiLabelMetrics:
    """Metrics of ``probs`` (N, K) against multi-hot ``y_true`` (N, K), each finding decided at
    its threshold (:data:`DEFAULT_THRESHOLD` where ``thresholds`` is None)."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    _check(y_true, probs, findings)
    k = len(findings)
    cut = np.full(k, DEFAULT_THRESHOLD) if thresholds is None else np.asarray(
        thresholds, dtype=np.float64)
    if cut.shape != (k,):
        raise DataError(f"{cut.shape[0] if cut.ndim else 0} thresholds for {k} findings")
    truth = _truth(y_true)
    pred = probs >= cut
    tp = (truth & pred).sum(axis=0)
    fp = (~truth & pred).sum(axis=0)
    fn = (truth & ~pred).sum(axis=0)
    tn = (~truth & ~pred).sum(axis=0)
    support, predicted = tp + fn, tp + fp
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    aucs = [finding_auc(truth[:, j], probs[:, j]) for j in range(k)]
    defined = [a for a in aucs if not math.isnan(a)]
    seen = (support > 0) | (predicted > 0)
    return MultiLabelMetrics(
        n=len(y_true),
        macro_auc=float(np.mean(defined)) if defined else math.nan,
        micro_auc=finding_auc(truth.ravel(), probs.ravel()),
        f1_macro=float(f1[seen].mean()) if seen.any() else math.nan,
        per_finding=[
            FindingMetrics(name=str(findings[j]), auc=aucs[j], precision=float(precision[j]),
                           recall=float(recall[j]), f1=float(f1[j]), support=int(support[j]),
                           threshold=float(cut[j]), tp=int(tp[j]), fp=int(fp[j]),
                           fn=int(fn[j]), tn=int(tn[j]))
            for j in range(k)
        ],
    )
