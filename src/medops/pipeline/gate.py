"""The gate: a candidate passes on an absolute threshold and, optionally, against the champion."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from medops.config.schema import GateConfig


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


def decide(cfg: GateConfig, value: float, champion_version: str | None = None,
           champion_value: float | None = None) -> GateVerdict:
    metric = cfg.metric.value
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
