"""Typed project configuration (medops.yaml): schema, enums, loading with actionable errors."""

from medops.config.enums import (
    Approval,
    Architecture,
    Device,
    EventKind,
    ExecutorKind,
    FrameMode,
    GateMetric,
    GroupBy,
    LabelsFrom,
    Normalize,
    SourceKind,
    Step,
    Task,
    WindowMode,
)
from medops.config.loader import (
    CONFIG_FILE,
    load_config,
    parse_config,
    parse_override,
    set_dotted,
)
from medops.config.schema import MedopsConfig, resolve_path
from medops.config.template import render_template

__all__ = [
    "CONFIG_FILE",
    "Approval",
    "Architecture",
    "Device",
    "EventKind",
    "ExecutorKind",
    "FrameMode",
    "GateMetric",
    "GroupBy",
    "LabelsFrom",
    "MedopsConfig",
    "Normalize",
    "SourceKind",
    "Step",
    "Task",
    "WindowMode",
    "load_config",
    "parse_config",
    "parse_override",
    "render_template",
    "resolve_path",
    "set_dotted",
]
