"""Serving: the `medops serve` endpoint (micro-batching, model swaps) and batch inference."""

from medops.serve.app import create_app
from medops.serve.batch import (
    BatchSummary,
    Files,
    ModelRef,
    OutputFormat,
    Predictor,
    batch_predict,
    list_inputs,
)
from medops.serve.host import Deployment, ModelHost
from medops.serve.server import forward_workers, run_server, share_cores

__all__ = [
    "BatchSummary",
    "Deployment",
    "Files",
    "ModelHost",
    "ModelRef",
    "OutputFormat",
    "Predictor",
    "batch_predict",
    "create_app",
    "forward_workers",
    "list_inputs",
    "run_server",
    "share_cores",
]
