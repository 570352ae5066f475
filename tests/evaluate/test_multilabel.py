"""Multi-label metrics against scikit-learn and by hand, the threshold rule, the NaN rules, and
each task's evaluation (thresholds, metrics, plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score

from medops.config.enums import GateMetric, Task
from medops.errors import DataError
from medops.evaluate import (
    DEFAULT_THRESHOLD,
    MultiLabelMetrics,
    choose_thresholds,
    compute_metrics,
    compute_multilabel_metrics,
    task_evaluation,
)

FINDINGS = ["Cardiomegaly", "Effusion", "Pleural Thickening"]


def _data(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.5, 0.2]).astype(np.float32)
    probs = np.clip(0.35 * y + rng.uniform(0, 0.65, (n, 3)), 0, 1)
    return y, probs


def test_metrics_match_scikit_learn() -> None:
    y, probs = _data()
    cuts = [0.4, 0.5, 0.6]
    m = compute_multilabel_metrics(y, probs, FINDINGS, cuts)
    assert m.n == 40
    assert [f.auc for f in m.per_finding] == pytest.approx(
        [roc_auc_score(y[:, k], probs[:, k]) for k in range(3)])
    assert m.macro_auc == pytest.approx(roc_auc_score(y, probs, average="macro"))
    assert m.micro_auc == pytest.approx(roc_auc_score(y, probs, average="micro"))
    pred = (probs >= np.array(cuts)).astype(int)
    p, r, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    assert [f.precision for f in m.per_finding] == pytest.approx(p)
    assert [f.recall for f in m.per_finding] == pytest.approx(r)
    assert [f.f1 for f in m.per_finding] == pytest.approx(f1)
    assert [f.support for f in m.per_finding] == list(support)
    assert m.f1_macro == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    assert [f.threshold for f in m.per_finding] == cuts
    for k, f in enumerate(m.per_finding):
        assert f.tp + f.fp + f.fn + f.tn == 40 and f.tp + f.fp == pred[:, k].sum()


def test_threshold_maximises_validation_f1_by_hand() -> None:
    truth = np.array([0, 0, 1, 1, 0, 1], dtype=np.float32)
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])
    # cuts from the top: 0.9 -> F1 0.5, 0.8 -> 0.8, 0.7 -> 0.667, 0.4 -> 0.571, 0.35 -> 0.75:
    # the best calls 0.8 and 0.9 positive; the threshold lies halfway to the next score (0.7)
    no_positive = np.zeros(6, dtype=np.float32)
    y = np.stack([truth, no_positive], axis=1)
    probs = np.stack([p, p], axis=1)
    assert choose_thresholds(y, probs, ["a", "b"]) == pytest.approx([0.75, DEFAULT_THRESHOLD])
    # ties: cuts 0.9 (P 1, R 1/2) and 0.1 (P 1/2, R 1) both give F1 2/3; the higher one wins
    tie = np.array([1, 0, 0, 1], dtype=np.float32)[:, None]
    assert choose_thresholds(tie, np.array([[0.9], [0.8], [0.4], [0.1]]), ["t"]) == \
        pytest.approx([0.85])
    # brute force over every cut agrees on random data
    yv, pv = _data(60, seed=3)
    chosen = choose_thresholds(yv, pv, FINDINGS)
    for k in range(3):
        best = max(f1_score(yv[:, k], pv[:, k] >= c) for c in np.unique(pv[:, k]))
        assert f1_score(yv[:, k], pv[:, k] >= chosen[k]) == pytest.approx(best)


def test_nan_rules_and_json() -> None:
    y, probs = _data()
    y[:, 1] = 0  # Effusion absent from this test set
    y[:, 2] = 1  # Pleural Thickening everywhere
    m = compute_multilabel_metrics(y, probs, FINDINGS)
    assert math.isnan(m.per_finding[1].auc) and math.isnan(m.per_finding[2].auc)
    assert m.macro_auc == pytest.approx(m.per_finding[0].auc)  # the mean of the defined ones
    assert m.per_finding[1].support == 0 and m.per_finding[1].recall == 0.0
    assert [f.threshold for f in m.per_finding] == [DEFAULT_THRESHOLD] * 3
    none = compute_multilabel_metrics(np.zeros((4, 3)), probs[:4], FINDINGS)
    assert math.isnan(none.macro_auc) and math.isnan(none.micro_auc)
    data = json.loads(m.to_json())
    assert data["task"] == "multilabel" and data["per_finding"][1]["auc"] is None
    back = MultiLabelMetrics.from_dict(data)
    assert back.per_finding[0] == m.per_finding[0] and math.isnan(back.per_finding[1].auc)


def test_flat_dict_and_gate_values() -> None:
    y, probs = _data()
    m = compute_multilabel_metrics(y, probs, FINDINGS, [0.3, 0.5, 0.7])
    flat = m.to_flat_dict()
    assert flat["test_auc"] == flat["test_macro_auc"] == m.macro_auc
    assert flat["test_micro_auc"] == m.micro_auc
    assert flat["test_auc_Pleural_Thickening"] == m.per_finding[2].auc
    assert flat["test_threshold_Pleural_Thickening"] == 0.7
    assert {"test_f1_Effusion", "test_precision_Effusion", "test_recall_Effusion",
            "test_support_Effusion"} <= set(flat)
    assert "test_accuracy" not in flat
    assert m.value(GateMetric.AUC) == m.value(GateMetric.MACRO_AUC) == m.macro_auc
    assert m.value(GateMetric.MICRO_AUC) == m.micro_auc
    assert m.value(GateMetric.AUC, "Effusion") == m.per_finding[1].auc
    with pytest.raises(DataError, match="not a metric of a multi-label model"):
        m.value(GateMetric.ACCURACY)
    with pytest.raises(DataError, match="the findings are"):
        m.value(GateMetric.AUC, "Efusion")


def test_shapes_are_checked() -> None:
    y, probs = _data()
    with pytest.raises(DataError, match=r"shape \(N, 2\)"):
        compute_multilabel_metrics(y, probs, FINDINGS[:2])
    with pytest.raises(DataError, match="do not match"):
        compute_multilabel_metrics(y[:, :2], probs, FINDINGS)
    with pytest.raises(DataError, match="2 thresholds for 3"):
        compute_multilabel_metrics(y, probs, FINDINGS, [0.5, 0.5])


def test_task_evaluations(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y3 = rng.integers(0, 3, 30)
    p3 = rng.dirichlet(np.ones(3), 30)
    multiclass = task_evaluation(Task.MULTICLASS)
    assert multiclass.thresholds(y3, p3, ["a", "b", "c"]) is None
    mc = multiclass.metrics(y3, p3, ["a", "b", "c"])
    assert mc == compute_metrics(y3, p3, ["a", "b", "c"])  # multiclass unchanged

    multilabel = task_evaluation(Task.MULTILABEL)
    yv, pv = _data(40, seed=5)
    thresholds = multilabel.thresholds(yv, pv, FINDINGS)
    assert thresholds is not None and list(thresholds) == FINDINGS
    y, probs = _data(30, seed=6)
    m = multilabel.metrics(y, probs, FINDINGS, thresholds)
    assert isinstance(m, MultiLabelMetrics)
    assert [f.threshold for f in m.per_finding] == pytest.approx(list(thresholds.values()))
    assert multilabel.load_metrics(m.to_dict()) == m
    with pytest.raises(DataError, match="not among the findings"):
        multilabel.metrics(y, probs, FINDINGS, {"Hernia": 0.5})
    written = multilabel.plots(m, y, probs, FINDINGS, tmp_path)
    assert [p.name for p in written] == ["roc_curves.png", "finding_confusion.png"]
    for path in written:
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 200
