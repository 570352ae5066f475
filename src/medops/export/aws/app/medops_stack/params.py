"""The stack's parameters: the ``medops:`` keys of cdk.json's context, checked."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

CONTEXT_PREFIX = "medops:"
# where things live in the buckets
SAGEMAKER_PREFIX = "sagemaker/"  # training output and checkpoints, in the artifacts bucket
CAPTURE_PREFIX = "endpoint/"  # the endpoint's data capture, in the capture bucket


class ParameterError(ValueError):
    """A context value (cdk.json or ``-c medops:KEY=VALUE``) the stack cannot use."""


@dataclass(frozen=True)
class StackParams:
    """The stack's parameters: the ``medops:`` keys of cdk.json's context."""

    project: str
    stack_name: str
    model_name: str
    datastore_id: str | None = None  # HealthImaging: no rules nor permissions without one
    raw_bucket_name: str | None = None  # None: CloudFormation names the raw bucket
    raw_prefix: str = ""  # the prefix new images arrive under ("": the whole bucket)
    serving_instance_type: str = "ml.m5.xlarge"
    min_instances: int = 1
    max_instances: int = 5
    invocations_per_instance: int = 100  # the target of target tracking, per minute
    training_instance_type: str = "ml.g4dn.xlarge"
    max_training_hours: int = 24
    sagemaker_pipeline: bool = True
    image_tag: str | None = None  # None: no endpoint or pipeline yet (no image pushed)
    mlflow_tracking_uri: str | None = None
    mlflow_tracking_username: str | None = None
    capture_percent: int = 100
    latency_alarm_ms: int = 1000
    alarm_email: str | None = None
    github_repository: str | None = None  # OWNER/NAME: a role its main branch may assume

    @classmethod
    def from_context(cls, context: dict[str, Any]) -> StackParams:
        """The parameters from the ``medops:`` context keys. Values given with ``-c`` on the
        command line arrive as strings and are converted here."""
        values: dict[str, Any] = {}
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, raw in context.items():
            if not key.startswith(CONTEXT_PREFIX):
                continue
            name = key[len(CONTEXT_PREFIX):]
            if name not in known:
                raise ParameterError(f"unknown context key {key!r}; known: "
                                     + ", ".join(CONTEXT_PREFIX + n for n in known))
            values[name] = _convert(key, raw, known[name].type)
        missing = [CONTEXT_PREFIX + n for n in ("project", "stack_name", "model_name")
                   if not values.get(n)]
        if missing:
            raise ParameterError(f"cdk.json has no {', '.join(missing)}; write it with "
                                 "`medops export aws --out DIR`")
        params = cls(**values)
        params.check()
        return params

    def check(self) -> None:
        """Raise ParameterError naming the key when a value cannot work on AWS."""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,39}", self.stack_name):
            raise ParameterError(f"medops:stack_name {self.stack_name!r}: a letter, then up to "
                                 "39 letters, digits or '-'")
        if self.datastore_id is not None and not re.fullmatch(r"[0-9a-z]{32}", self.datastore_id):
            raise ParameterError(f"medops:datastore_id {self.datastore_id!r} is not a "
                                 "HealthImaging datastore id (32 lowercase letters and digits)")
        if not 1 <= self.min_instances <= self.max_instances:
            raise ParameterError(f"medops:min_instances ({self.min_instances}) and "
                                 f"medops:max_instances ({self.max_instances}) need "
                                 "1 <= min <= max")
        if not 0 < self.capture_percent <= 100:
            raise ParameterError(f"medops:capture_percent {self.capture_percent}: 1 to 100")
        for key, value in (("serving_instance_type", self.serving_instance_type),
                           ("training_instance_type", self.training_instance_type)):
            if not re.fullmatch(r"ml\.[a-z0-9]+\.[a-z0-9]+", value):
                raise ParameterError(f"medops:{key} {value!r} is not a SageMaker instance "
                                     "type (e.g. ml.m5.xlarge)")
        if self.image_tag is not None and not self.mlflow_tracking_uri:
            raise ParameterError("medops:image_tag is set but medops:mlflow_tracking_uri is "
                                 "not: the endpoint loads its model from the MLflow registry")
        if self.github_repository is not None and not re.fullmatch(
                r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", self.github_repository):
            raise ParameterError(f"medops:github_repository {self.github_repository!r}: "
                                 "write it as OWNER/NAME")


def _convert(key: str, raw: Any, kind: Any) -> Any:
    text = str(kind)
    if raw is None or (isinstance(raw, str) and raw == "" and "None" in text):
        return None
    try:
        if text.startswith("int"):
            return int(raw)
        if text.startswith("bool"):
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("true", "false"):
                return str(raw).lower() == "true"
            raise ValueError(raw)
    except ValueError:
        raise ParameterError(f"context {key}={raw!r}: expected {text}") from None
    return str(raw)
