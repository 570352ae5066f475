"""Shared fixtures: real data files, real databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.spark_cluster import SparkCluster

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real MedMNIST, HTJ2K and X-ray files), or a skip saying it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA


def _postgres_database() -> Iterator[str]:
    base = os.environ.get("MEDOPS_TEST_POSTGRES_URI")
    if not base:
        pytest.skip("MEDOPS_TEST_POSTGRES_URI is not set (scripts/test sets it)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"medops_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty state database: SQLite in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    else:
        yield from _postgres_database()


@dataclass
class TrainedProject:
    """A project whose model the real pipeline trained and registered once per session."""

    project: Any  # medops.project.Project
    raw: Path  # its images, three deliberately broken files among them
    source: str  # the registered version's model artifact
    run_id: str

    def new_model(self, name: str, versions: int) -> Any:
        """A registered model ``name`` with ``versions`` versions of the trained artifact."""
        from medops.registry import ModelRegistry

        registry = ModelRegistry(self.project.tracker.client, name,
                                 self.project.artifacts / "models")
        v1 = self.project.registry.get("1")
        for _ in range(versions):
            registry.register(self.run_id, self.source, dict(v1.tags))
        return registry


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> TrainedProject:
    """One tiny model (resnet18, 32 px, 2 epochs) registered by the real pipeline: seconds."""
    from medops.demo.synthetic import make_synthetic_dataset
    from medops.pipeline import PipelineRunner
    from medops.project import Project

    root = tmp_path_factory.mktemp("trained") / "proj"
    Project.init(root, name="trained")
    raw = root / "data" / "raw"
    make_synthetic_dataset(raw, n_patients=12, images_per_patient=2, size=32,
                           corrupt_examples=True)
    project = Project.load(root, TRAINED_OVERRIDES)
    PipelineRunner(project).run()
    v1 = project.registry.get("1")
    return TrainedProject(project, raw, v1.source, v1.run_id or "")


TRAINED_OVERRIDES: dict[str, Any] = {
    "train.epochs": 2, "train.patience": 2, "preprocess.size": [32, 32],
    "executor.workers": 2, "gate.min": 0.0, "data.split.val": 0.25, "data.split.test": 0.25,
    "pipeline.retries.backoff_seconds": 0.0,
}


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A real standalone Spark cluster (one master, one 2-core worker) on loopback, started
    once per session; see tests/spark_cluster.py. A test that kills its worker starts a new
    one before it ends."""
    from tests.spark_cluster import running_cluster

    with running_cluster(tmp_path_factory.mktemp("spark")) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def spark_master(spark_cluster: SparkCluster) -> str:
    """The URL of the session's standalone Spark cluster: spark://127.0.0.1:PORT."""
    return spark_cluster.url
