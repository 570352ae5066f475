"""The agent's part of medops.yaml: retraining triggers, the agent loop and notifications.

    triggers:
      - {on: data.arrived, min_new_items: 500, debounce: 10m}
      - {on: drift.detected, min_new_items: 50}   # min_new_items: 0 (default) = always
      - {on: schedule, cron: "0 3 1 * *"}      # or every: 1d
      - {on: run.requested}
    agent: {cooldown: 10m}
    notify: {urls: ["mailto://...", "slack://..."]}

Durations are numbers of seconds or strings with a unit: ``500ms``, ``2s``, ``10m``, ``1h``,
``1d``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from medops.config.enums import StrEnum

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(ms|s|m|h|d)?\s*")


def parse_duration(value: Any) -> Any:
    """``"10m"`` -> 600.0; numbers are seconds. Anything else is left for pydantic to reject."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m is None:
            raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 10m, 1h or 1d")
        return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0.0)]


class TriggerKind(StrEnum):
    """What a trigger reacts to (the event kind, or ``schedule`` for ``schedule.fired``)."""

    DATA_ARRIVED = "data.arrived"
    DRIFT_DETECTED = "drift.detected"
    SCHEDULE = "schedule"
    RUN_REQUESTED = "run.requested"


class NotifyOn(StrEnum):
    """What a notification is sent for."""

    RUN_FAILED = "run.failed"
    GATE_FAILED = "gate.failed"
    APPROVAL_PENDING = "approval.pending"  # a candidate waits for `medops models approve`
    DRIFT_DETECTED = "drift.detected"
    MODEL_DEPLOYED = "model.deployed"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataArrivedTrigger(_Strict):
    on: Literal[TriggerKind.DATA_ARRIVED]
    # "Sufficient data?": new labelled, valid items since the champion's dataset version
    # (since the last run's when there is no champion) needed to start a run.
    min_new_items: int = Field(100, ge=0)
    # Quiet time after the last data.arrived event before deciding: a burst is one run.
    debounce: Duration = 60.0


class DriftTrigger(_Strict):
    on: Literal[TriggerKind.DRIFT_DETECTED]
    # A model retrained on the data it already had drifts just the same: with this above 0 a
    # drift alarm starts a run only once that many new labelled items (counted as for
    # data.arrived) are there to learn the new distribution from.
    min_new_items: int = Field(0, ge=0)


class RunRequestedTrigger(_Strict):
    on: Literal[TriggerKind.RUN_REQUESTED]


class ScheduleTrigger(_Strict):
    on: Literal[TriggerKind.SCHEDULE]
    name: str | None = None  # default: the cron expression or interval; part of the event key
    cron: str | None = None  # 5 fields, or 6 with seconds last (croniter)
    every: Duration | None = None  # a fixed interval, aligned to the epoch (every: 2s)

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleTrigger:
        if (self.cron is None) == (self.every is None):
            raise ValueError("a schedule trigger needs exactly one of cron or every")
        if self.every is not None and self.every <= 0:
            raise ValueError(f"every must be positive (got {self.every})")
        if self.cron is not None:
            _check_cron(self.cron)
        return self

    @property
    def key(self) -> str:
        return self.name or (f"cron {self.cron}" if self.cron else f"every {self.every:g}s")


def _check_cron(expr: str) -> None:
    try:
        from croniter import croniter
    except ModuleNotFoundError:  # checked again, with the install hint, when the agent starts
        return
    if not croniter.is_valid(expr):
        raise ValueError(f"cron {expr!r} is not a valid cron expression (5 fields, or 6 with "
                         "seconds last), e.g. '0 3 * * *'")


Trigger = Annotated[
    DataArrivedTrigger | DriftTrigger | RunRequestedTrigger | ScheduleTrigger,
    Field(discriminator="on"),
]


def _yaml_on(value: Any) -> Any:
    # YAML 1.1 reads a bare `on:` key as the boolean True.
    if isinstance(value, list):
        return [{("on" if k is True else k): v for k, v in t.items()} if isinstance(t, dict)
                else t for t in value]
    return value


Triggers = Annotated[list[Trigger], BeforeValidator(_yaml_on)]


def default_triggers() -> list[Trigger]:
    return [RunRequestedTrigger(on=TriggerKind.RUN_REQUESTED),
            DataArrivedTrigger(on=TriggerKind.DATA_ARRIVED),
            DriftTrigger(on=TriggerKind.DRIFT_DETECTED)]


class AgentConfig(_Strict):
    cooldown: Duration = 600.0  # after a run finishes, automatic triggers wait this long
    poll_interval: Duration = 0.2  # how often events written by other processes are read
    watch: bool = True  # watch the folder source (data.source) for new files
    watch_quiet: Duration = 0.2  # import once the folder has been quiet this long
    source_poll: Duration = 60.0  # how often network sources (data.sources) are polled
    stop_timeout: Duration = 15.0  # on SIGTERM, time the current step gets to checkpoint
    # Agents of one project sharing a state database: one acts, the others stand by and take
    # over this long after it stopped renewing its lease (killed, machine gone)
    lease: Annotated[float, BeforeValidator(parse_duration), Field(gt=0.0)] = 15.0


class NotifyConfig(_Strict):
    # apprise URLs (mailto://, slack://, msteams://, json://...). They often hold secrets:
    # medops never logs them and keeps them out of MLflow.
    urls: list[str] = Field(default_factory=list)
    events: list[NotifyOn] = Field(default_factory=lambda: list(NotifyOn))
    # While one model version keeps drifting (every hourly check of a 24 h window), remind at
    # most this often; 0: a message for every drifted window.
    drift_repeat: Duration = 86400.0
