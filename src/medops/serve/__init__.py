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
from medops.serve.server import run_server

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
    "list_inputs",
    "run_server",
]
