"""Runs of the pipeline: ingest → validate → split → preprocess → train → evaluate → gate →
register, each step recorded, retried and resumable."""

from medops.pipeline.context import (
    Reporter,
    RunContext,
    SilentReporter,
    Workspace,
)
from medops.pipeline.discard import Discarded, discard_run
from medops.pipeline.gate import GateVerdict, check_gate_finding, decide, gate_metric_name
from medops.pipeline.interrupt import Interrupt
from medops.pipeline.runner import STEPS, PipelineRunner, new_run_id
from medops.registry.runs import reap_dead_runs

__all__ = [
    "STEPS",
    "Discarded",
    "GateVerdict",
    "Interrupt",
    "PipelineRunner",
    "Reporter",
    "RunContext",
    "SilentReporter",
    "Workspace",
    "check_gate_finding",
    "decide",
    "discard_run",
    "gate_metric_name",
    "new_run_id",
    "reap_dead_runs",
]
