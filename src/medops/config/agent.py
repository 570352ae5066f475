"""The agent's part of medops.yaml: retraining triggers, the agent loop and notifications.

    triggers:
      - {on: data.arrived, min_new_items: 500, debounce: 10m}
      - {on: drift.detected, min_new_items: 50}   # min_new_items: 0 (default) = always
      - {on: schedule, cron: "0 3 1 * *"}      # or every: 1d
      - {on: run.requested}
      - {on: code.changed, repo: ../model, branch: main}   # poll: 1s, debounce: 0
      - {on: image.pushed, repository: medops/train}     # tag: latest (any tag by default)
    agent: {cooldown: 10m}
    notify: {urls: ["mailto://...", "slack://..."]}

Durations are numbers of seconds or strings with a unit: ``500ms``, ``2s``, ``10m``, ``1h``,
``1d``.

``code.changed`` watches the head of ``branch`` in the git repository at ``repo`` (relative to
the project root, or absolute): a commit there starts a run, and the registered version's tags
carry the commit (``code_commit``). ``image.pushed`` acts on the events the SQS feed stores for
ECR pushes to ``repository`` (and ``tag``, when given); the version's tags carry the digest.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

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
    CODE_CHANGED = "code.changed"  # the watched branch of the model repository moved
    IMAGE_PUSHED = "image.pushed"  # an image was pushed to a container registry (ECR)


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


# git check-ref-format's rules for a branch name, less the rare ones git itself reports
_BAD_BRANCH = re.compile(r"(^[-/.])|(\.\.)|([\x00-\x20~^:?*\[\\\x7f])|(@\{)|(//)|([/.]$)"
                         r"|(\.lock$)|(\.lock/)|(/\.)")
# ECR's rule for repository names (namespaces separated by /)
_ECR_REPOSITORY = re.compile(r"(?:[a-z0-9]+(?:[._-][a-z0-9]+)*/)*[a-z0-9]+(?:[._-][a-z0-9]+)*")


class CodeChangedTrigger(_Strict):
    on: Literal[TriggerKind.CODE_CHANGED]
    repo: str = Field(min_length=1)  # the model repository: relative to the project root
    branch: str = "main"
    # How often the branch head is read (a `git rev-parse`, a few milliseconds)
    poll: Annotated[float, BeforeValidator(parse_duration), Field(gt=0.0)] = 1.0
    # Quiet time after the newest commit before deciding: a series of pushes is one run
    debounce: Duration = 0.0

    @model_validator(mode="after")
    def _valid_branch(self) -> CodeChangedTrigger:
        if _BAD_BRANCH.search(self.branch) or self.branch == "@":
            raise ValueError(f"branch {self.branch!r} is not a valid git branch name; write it "
                             "as `git branch` lists it, e.g. main")
        if self.branch.startswith("refs/"):
            raise ValueError(f"branch {self.branch!r}: write the branch name without refs/ "
                             f"(e.g. {self.branch.removeprefix('refs/heads/')})")
        return self


class ImagePushedTrigger(_Strict):
    on: Literal[TriggerKind.IMAGE_PUSHED]
    repository: str  # the ECR repository name, e.g. medops/train (not the registry URI)
    tag: str | None = None  # only pushes of this tag; None: any tag
    debounce: Duration = 0.0

    @model_validator(mode="after")
    def _valid_repository(self) -> ImagePushedTrigger:
        if "amazonaws.com" in self.repository or ":" in self.repository:
            raise ValueError(f"repository {self.repository!r} looks like an image URI; write "
                             "the ECR repository name alone, e.g. medops/train (and the tag "
                             "in `tag:`)")
        if not (2 <= len(self.repository) <= 256
                and _ECR_REPOSITORY.fullmatch(self.repository)):
            raise ValueError(f"repository {self.repository!r} is not an ECR repository name "
                             "(lowercase letters, digits, and . _ - / between them), e.g. "
                             "medops/train")
        return self


def _check_cron(expr: str) -> None:
    try:
        from croniter import croniter
    except ModuleNotFoundError:  # checked again, with the install hint, when the agent starts
        return
    if not croniter.is_valid(expr):
        raise ValueError(f"cron {expr!r} is not a valid cron expression (5 fields, or 6 with "
                         "seconds last), e.g. '0 3 * * *'")


Trigger = Annotated[
    DataArrivedTrigger | DriftTrigger | RunRequestedTrigger | ScheduleTrigger
    | CodeChangedTrigger | ImagePushedTrigger,
    Field(discriminator="on"),
]


def _yaml_on(value: Any) -> Any:
    # YAML 1.1 reads a bare `on:` key as the boolean True.
    if isinstance(value, list):
        return [{("on" if k is True else k): v for k, v in t.items()} if isinstance(t, dict)
                else t for t in value]
    return value


def _distinct(triggers: Sequence[Trigger]) -> Sequence[Trigger]:
    # Two triggers on one branch or one repository would decide the same events twice.
    seen: dict[tuple[str, ...], int] = {}
    for i, t in enumerate(triggers):
        key: tuple[str, ...] | None = None
        if isinstance(t, CodeChangedTrigger):
            key = (t.on, t.repo.rstrip("/"), t.branch)
        elif isinstance(t, ImagePushedTrigger):
            key = (t.on, t.repository, t.tag or "")
        if key is None:
            continue
        if key in seen:
            raise ValueError(f"triggers {seen[key]} and {i} are the same {t.on} trigger "
                             f"({', '.join(key[1:]).rstrip(', ')}); keep one")
        seen[key] = i
    return triggers


Triggers = Annotated[list[Trigger], BeforeValidator(_yaml_on), AfterValidator(_distinct)]


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
