"""Runs of the pipeline: ingest → validate → split → preprocess → train → evaluate → gate →
register, each step recorded, retried and resumable."""

from medops.pipeline.context import (
    Reporter,
    RunContext,
    SilentReporter,
    Workspace,
    reap_dead_runs,
)
from medops.pipeline.discard import Discarded, discard_run
from medops.pipeline.gate import GateVerdict, decide
from medops.pipeline.interrupt import Interrupt
from medops.pipeline.runner import STEPS, PipelineRunner, new_run_id

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
    "decide",
    "discard_run",
    "new_run_id",
    "reap_dead_runs",
]
