"""medops: MLOps for medical image classifiers, from DICOM to a gated, registered, served and
monitored model.

Subpackages, top (may import those below) to bottom:

- ``cli``        the `medops` command, a thin shell over the API; the demo runner
- ``server``     the team server: HTTP API and dashboard over the shared state, users and roles
- ``export``     deployable files from medops.yaml: the AWS stack (a CDK app), CI workflows
- ``api``        the Python API for notebooks and scripts: open a project, run, read, predict
- ``project``    the composition root: builds stores, clients and executors from medops.yaml
- ``agent``      the retraining loop: watches, schedules, policy, runs, notifications
- ``pipeline``   runs, steps, retries and resume; the steps themselves
- ``serve``      the HTTP endpoint (micro-batching, model swaps) and batch inference
- ``monitor``    captured predictions, drift and live quality against the training baseline
- ``registry``   MLflow tracking, packaged pyfunc models, versions, tags, aliases and sign-off
- ``train``      networks, the training loop, checkpoints
- ``evaluate``   metrics and plots
- ``preprocess`` preprocessing profiles, the content-addressed cache
- ``executor``   where map work runs: a process pool, in-process, or a Spark cluster
- ``data``       sources, DICOM decoding, validation, splits, manifests
- ``demo``       synthetic, clearly labelled DICOM data for the demo and tests
- ``storage``    the state store (SQLAlchemy) and locations
- ``config``     the typed medops.yaml
- ``errors``     the exception tree

The public API is re-exported here lazily, so ``import medops`` stays cheap (docs/python-api.md
has a whole example; type checkers see the types of names imported from ``medops.api``)::

    import medops

    project = medops.open_project("chest-xray", overrides={"train.epochs": 2})
    run = project.run(until="evaluate")
    print(run.status, run.metrics["test_auc"])
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "open_project": "medops.api",
    "init_project": "medops.api",
    "Session": "medops.api",
    "RunResult": "medops.api",
    "StepResult": "medops.api",
    "RunMetrics": "medops.api",
    "ModelVersion": "medops.api",
    "Prediction": "medops.api",
    "ImportResult": "medops.api",
    "Project": "medops.project",
    "import_source": "medops.project",
    "PipelineRunner": "medops.pipeline",
    "MedopsConfig": "medops.config",
    "load_config": "medops.config",
    "MedopsError": "medops.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medops' has no attribute {name!r}")
