"""The gate: a candidate passes on an absolute threshold and, optionally, against the champion.

The metric is ``gate.metric`` (for a multi-label model ``auc`` is the macro AUC over findings,
the same value as ``macro_auc``), or with ``gate.finding`` that finding's AUC. The evaluate step
logs each as ``test_<name>`` with the name :func:`gate_metric_name` gives.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from medops.config.schema import GateConfig
from medops.errors import ConfigError
from medops.evaluate import metric_key


@dataclass
class GateVerdict:
    passed: bool
    metric: str
    value: float
    threshold: float
    champion_version: str | None = None
    champion_value: float | None = None
    reasons: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_metric_name(cfg: GateConfig) -> str:
    """The gate's metric as the evaluation names it without its split prefix: ``auc``,
    ``macro_auc``, ... or ``auc_<finding>`` (the finding's name made safe by
    :func:`~medops.evaluate.metric_key`)."""
    if cfg.finding is not None:
        return f"auc_{metric_key(cfg.finding)}"
    return cfg.metric.value


def check_gate_finding(cfg: GateConfig, classes: Sequence[str]) -> None:
    """A :class:`ConfigError` when ``gate.finding`` names no finding of the data set."""
    if cfg.finding is None or cfg.finding in classes:
        return
    close = difflib.get_close_matches(cfg.finding, list(classes), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"gate.finding {cfg.finding!r} is not a finding of this data set "
                      f"{list(classes)}{hint} Fix gate.finding (names are case-sensitive), or "
                      "remove it to gate on the macro AUC")


def decide(cfg: GateConfig, value: float, champion_version: str | None = None,
           champion_value: float | None = None) -> GateVerdict:
    metric = gate_metric_name(cfg)
    verdict = GateVerdict(passed=True, metric=metric, value=value, threshold=cfg.min,
                          champion_version=champion_version, champion_value=champion_value)
    if not value >= cfg.min:  # also catches NaN
        verdict.passed = False
        verdict.reasons.append(f"test {metric} {value:.4f} is below gate.min {cfg.min}")
    if cfg.must_beat_champion and champion_version is not None:
        if champion_value is None:
            verdict.passed = False
            verdict.reasons.append(
                f"champion v{champion_version} could not be scored on this test split")
        elif not value > champion_value:
            verdict.passed = False
            verdict.reasons.append(
                f"test {metric} {value:.4f} does not beat champion v{champion_version} "
                f"({champion_value:.4f}) on the same test split")
    if verdict.passed:
        verdict.reasons.append(f"test {metric} {value:.4f} >= {cfg.min}" + (
            f" and beats champion v{champion_version} ({champion_value:.4f})"
            if champion_value is not None else ""))
    return verdict
