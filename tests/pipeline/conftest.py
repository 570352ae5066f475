from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from medops.demo.synthetic import SyntheticDataset, make_synthetic_dataset
from medops.pipeline import SilentReporter
from medops.project import Project

# Small and quick, but the real pipeline: real DICOM, real MLflow, real process pool.
FAST: dict[str, Any] = {
    "train.epochs": 3,
    "train.patience": 3,
    "preprocess.size": [32, 32],
    "executor.workers": 2,
    "gate.min": 0.0,
    "data.split.val": 0.2,
    "data.split.test": 0.25,
    "pipeline.retries.backoff_seconds": 0.0,
}


class AtStep(SilentReporter):
    """Calls ``action`` when ``step`` starts its first attempt, as a signal arriving then would."""

    def __init__(self, step: str, action: Callable[[], Any]) -> None:
        self.step, self.action = step, action
        self.failures: list[str] = []

    def step_started(self, step: str, attempt: int) -> None:
        if step == self.step and attempt == 1:
            self.action()

    def step_failed(self, step: str, error: str, attempt: int, will_retry: bool) -> None:
        self.failures.append(step)


def make_project(root: Path, **overrides: Any) -> Project:
    if not (root / "medops.yaml").exists():
        Project.init(root, name="test-project")
    return Project.load(root, {**FAST, **overrides})


@pytest.fixture(scope="session")
def synthetic_dicom(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "raw",
                                  n_patients=20, images_per_patient=3, size=48)


@pytest.fixture
def project(tmp_path: Path, synthetic_dicom: SyntheticDataset) -> Project:
    import shutil

    root = tmp_path / "proj"
    Project.init(root, name="test-project")
    shutil.rmtree(root / "data" / "raw")
    shutil.copytree(synthetic_dicom.root, root / "data" / "raw")
    return make_project(root)
