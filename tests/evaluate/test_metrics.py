"""compute_metrics against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medops.config.enums import GateMetric
from medops.errors import DataError
from medops.evaluate import EvalMetrics, compute_metrics


def _binary() -> tuple[np.ndarray, np.ndarray]:
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    return y, np.stack([1 - p1, p1], axis=1)


def _three_class() -> tuple[np.ndarray, np.ndarray]:
    y = np.array([0, 1, 2, 2, 1, 0])
    probs = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.2, 0.5, 0.3],
            [0.1, 0.3, 0.6],
            [0.3, 0.4, 0.3],
            [0.5, 0.3, 0.2],
            [0.6, 0.1, 0.3],
        ]
    )
    return y, probs


def test_binary_by_hand() -> None:
    y, probs = _binary()
    m = compute_metrics(y, probs, ["malignant", "benign"])
    # predictions 0 1 0 1 1 against 0 0 1 1 1
    assert m.confusion == [[1, 1], [1, 2]]
    assert m.accuracy == pytest.approx(3 / 5)
    assert m.balanced_accuracy == pytest.approx((1 / 2 + 2 / 3) / 2)
    # positive-vs-negative pairs ranked right: 0.4>0.1, 0.8 and 0.9 beat both -> 5 of 6
    assert m.auc == pytest.approx(5 / 6)
    assert m.per_class[1].precision == pytest.approx(2 / 3)
    assert m.per_class[1].recall == pytest.approx(2 / 3)
    assert m.per_class[0].f1 == pytest.approx(0.5)
    assert m.f1_macro == pytest.approx((0.5 + 2 / 3) / 2)
    assert [c.support for c in m.per_class] == [2, 3]
    assert m.value(GateMetric.AUC) == m.auc
    assert m.value(GateMetric.BALANCED_ACCURACY) == m.balanced_accuracy


def test_three_class_by_hand() -> None:
    y, probs = _three_class()
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m.confusion == [[2, 0, 0], [1, 1, 0], [0, 1, 1]]
    assert m.accuracy == pytest.approx(4 / 6)
    assert m.balanced_accuracy == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert [c.precision for c in m.per_class] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert [c.f1 for c in m.per_class] == pytest.approx([0.8, 0.5, 2 / 3])
    assert m.f1_macro == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # one-vs-rest AUCs with ties counted as a half: 8/8, 6.5/8, 7/8
    assert [c.auc for c in m.per_class] == pytest.approx([1.0, 0.8125, 0.875])
    assert m.auc == pytest.approx((1.0 + 0.8125 + 0.875) / 3)
    assert m.auc == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))


def test_absent_class_is_left_out_of_the_auc_without_warnings() -> None:
    y, probs = _three_class()
    keep = y != 2
    m = compute_metrics(y[keep], probs[keep], ["a", "b", "c"])
    assert math.isnan(m.per_class[2].auc)
    assert m.per_class[2].support == 0
    assert m.auc == pytest.approx((m.per_class[0].auc + m.per_class[1].auc) / 2)
    # the mean recall runs over the two classes present
    assert m.balanced_accuracy == pytest.approx((1.0 + 0.5) / 2)


def test_single_class_auc_is_nan_and_json_has_null() -> None:
    y = np.array([1, 1, 1])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    m = compute_metrics(y, probs, ["neg", "pos"])
    assert math.isnan(m.auc)
    assert m.accuracy == pytest.approx(2 / 3)
    data = json.loads(m.to_json())
    assert data["auc"] is None
    back = EvalMetrics.from_dict(data)
    assert math.isnan(back.auc)
    assert back.confusion == m.confusion


def test_flat_dict_keys_are_mlflow_safe() -> None:
    y, probs = _binary()
    flat = compute_metrics(y, probs, ["no finding", "Cardiomegaly/large"]).to_flat_dict()
    assert flat["test_auc"] == pytest.approx(5 / 6)
    assert flat["test_recall_no_finding"] == pytest.approx(0.5)
    assert "test_recall_Cardiomegaly_large" in flat
    assert all(isinstance(v, float) for v in flat.values())


def test_shape_mismatch_is_a_data_error() -> None:
    y, probs = _binary()
    with pytest.raises(DataError, match="shape"):
        compute_metrics(y, probs, ["a", "b", "c"])
    with pytest.raises(DataError, match="class indices"):
        compute_metrics(np.array([0, 0, 1, 1, 2]), probs, ["a", "b"])
