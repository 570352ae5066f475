"""`medops demo`, the first thing a new user runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medops.cli.main import app
from medops.storage import ItemStatus, RunStatus

pytestmark = pytest.mark.slow


def test_demo_on_synthetic_dicom(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "demo"), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "SYNTHETIC" in out and "quarantined" in out and "try next" in out
    from medops.project import Project

    project = Project.load(tmp_path / "demo")
    run = project.state.list_runs()[0]
    assert run.status is RunStatus.SUCCEEDED and run.trigger == "demo"
    assert len(project.state.items(ItemStatus.QUARANTINED)) == 3
    syntaxes = {i.info["transfer_syntax"] for i in project.state.items(ItemStatus.OK)}
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"} <= syntaxes  # RLE, JPEG 2000


def test_demo_on_medmnist(tmp_path: Path, shared_data: Path) -> None:
    npz = shared_data / "medmnist" / "breastmnist_28.npz"
    result = CliRunner().invoke(app, ["demo", "--data", str(npz), "--dir", str(tmp_path / "d"),
                                      "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "imported" in result.output and "test metrics" in result.output
