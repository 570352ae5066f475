"""The public API is deliberate: these names, and they resolve."""

from __future__ import annotations

import medops


def test_public_api() -> None:
    assert set(medops.__all__) == {"__version__", "Project", "import_source", "PipelineRunner",
                                   "MedopsConfig", "load_config", "MedopsError",
                                   "open_project", "init_project", "Session", "RunResult",
                                   "StepResult", "RunMetrics", "ModelVersion", "Prediction",
                                   "ImportResult"}
    for name in medops.__all__:
        assert getattr(medops, name) is not None
