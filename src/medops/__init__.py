"""medops: MLOps for medical image classifiers, from DICOM to a gated, registered model.

Subpackages, top (may import those below) to bottom:

- ``cli``        the `medops` command, a thin shell over the API; the demo runner
- ``project``    the composition root: builds stores, clients and executors from medops.yaml
- ``pipeline``   runs, steps, retries and resume; the steps themselves
- ``registry``   MLflow tracking, packaged pyfunc models, versions, tags and aliases
- ``train``      torchvision architectures, the training loop, checkpoints
- ``evaluate``   metrics and plots
- ``preprocess`` preprocessing profiles, the content-addressed cache
- ``executor``   where map work runs: a process pool, or in-process
- ``data``       sources, DICOM decoding, validation, splits, manifests
- ``demo``       synthetic, clearly labelled DICOM data for the demo and tests
- ``storage``    the state store (SQLAlchemy) and locations
- ``config``     the typed medops.yaml
- ``errors``     the exception tree

The public API is re-exported here lazily, so ``import medops`` stays cheap::

    from medops import Project, PipelineRunner
    project = Project.load(Path("chest-xray"))
    run = PipelineRunner(project).run()
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
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
