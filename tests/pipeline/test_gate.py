"""The gate's metric for each task: what medops.yaml accepts (checked on load, with the fix), the
metric name the evaluation logs, a finding that does not exist, and the verdicts."""

from __future__ import annotations

import math
from typing import Any

import pytest

from medops.config import parse_config
from medops.config.enums import GateMetric
from medops.config.schema import GateConfig
from medops.errors import ConfigError
from medops.pipeline import check_gate_finding, decide, gate_metric_name


def _gate(task: str, **gate: Any) -> GateConfig:
    return parse_config({"project": "p", "task": task, "gate": gate}).gate


def test_multilabel_gate_metrics_load() -> None:
    assert _gate("multilabel").metric is GateMetric.AUC  # the default: the macro AUC
    assert _gate("multilabel", metric="macro_auc").metric is GateMetric.MACRO_AUC
    assert _gate("multilabel", metric="micro_auc").metric is GateMetric.MICRO_AUC
    assert _gate("multilabel", finding="Effusion").finding == "Effusion"


@pytest.mark.parametrize(("task", "gate", "message"), [
    ("multilabel", {"metric": "accuracy"}, "gate.metric 'accuracy' is a multiclass metric"),
    ("multilabel", {"metric": "balanced_accuracy"}, "fix: gate.metric: auc"),
    ("multiclass", {"metric": "macro_auc"}, "is for task: multilabel"),
    ("multiclass", {"finding": "Effusion"}, "remove gate.finding, or set task: multilabel"),
    ("multilabel", {"metric": "micro_auc", "finding": "Effusion"},
     "gate.finding \\('Effusion'\\) gates on that finding's AUC"),
    ("multilabel", {"finding": "  "}, "gate.finding is empty"),
])
def test_a_gate_that_does_not_fit_the_task_is_refused_on_load(
        task: str, gate: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _gate(task, **gate)


def test_metric_names_match_the_evaluations_keys() -> None:
    assert gate_metric_name(_gate("multiclass")) == "auc"
    assert gate_metric_name(_gate("multiclass", metric="balanced_accuracy")) == \
        "balanced_accuracy"
    assert gate_metric_name(_gate("multilabel", metric="macro_auc")) == "macro_auc"
    # the finding's name made safe for MLflow as the per-finding metrics are
    assert gate_metric_name(_gate("multilabel", finding="Pleural Thickening")) == \
        "auc_Pleural_Thickening"


def test_an_unknown_finding_names_the_findings_and_the_nearest() -> None:
    findings = ["Cardiomegaly", "Effusion", "Nodule"]
    check_gate_finding(_gate("multilabel", finding="Effusion"), findings)
    check_gate_finding(_gate("multilabel"), findings)
    with pytest.raises(ConfigError, match=r"did you mean 'Effusion'\?") as err:
        check_gate_finding(_gate("multilabel", finding="effusion"), findings)
    assert "'Cardiomegaly', 'Effusion', 'Nodule'" in str(err.value)


def test_verdicts_on_a_finding() -> None:
    cfg = _gate("multilabel", finding="Effusion", min=0.7)
    passed = decide(cfg, 0.8)
    assert passed.passed and passed.metric == "auc_Effusion"
    assert passed.reasons == ["test auc_Effusion 0.8000 >= 0.7"]
    assert not decide(cfg, math.nan).passed  # undefined (no positive in the test split)
    beaten = decide(cfg, 0.8, champion_version="3", champion_value=0.85)
    assert not beaten.passed and "does not beat champion v3 (0.8500)" in beaten.reasons[0]
