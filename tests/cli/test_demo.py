"""`medops demo`, the first thing a new user runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from medops.cli.main import app
from medops.storage import ItemStatus, RunStatus

pytestmark = pytest.mark.slow


def test_demo_on_synthetic_dicom_closes_the_loop(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "demo"), "--epochs", "3"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "SYNTHETIC" in out and "quarantined" in out and "try next" in out
    from medops.project import Project
    from medops.registry import CHAMPION

    project = Project.load(tmp_path / "demo")
    first, second = sorted(project.state.list_runs(), key=lambda r: r.started_at)
    assert first.status is RunStatus.SUCCEEDED and first.trigger == "demo"
    assert len(project.state.items(ItemStatus.QUARANTINED)) == 3
    syntaxes = {i.info["transfer_syntax"] for i in project.state.items(ItemStatus.OK)}
    assert {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"} <= syntaxes  # RLE, JPEG 2000

    # The loop: the monitor caught the new detector, the agent retrained on its labelled
    # images, v2 passed its gate against v1 and went live, and the server swapped to it.
    started = [e for e in project.state.event_log("drift.detected")
               if e.decision is not None and e.decision.decision == "started"]
    assert len(started) == 1 and started[0].payload["version"] == "1"
    assert second.trigger == f"drift.detected#{started[0].id}"
    assert second.status is RunStatus.SUCCEEDED
    gate = next(s.outputs for s in second.steps if s.name == "gate")
    assert gate["passed"] and gate["champion_version"] == "1"
    champion = project.registry.by_alias(CHAMPION)
    assert champion is not None and champion.version == "2"
    assert [d.version for d in project.state.deployments(project.config.model_name)] == ["1", "2"]
    arrived = project.state.event_log("data.arrived")
    assert arrived and arrived[0].decision is not None
    assert arrived[0].decision.reason.startswith(
        "only 96 new labelled item(s) < min_new_items 500 since the champion's dataset")

    # ... and the user saw it happen.
    flat = " ".join(out.split())
    assert "the server answers with v2" in flat and "answered by v1 then v2, 0 failed" in flat
    timeline = out[out.index("timeline"):out.index("try next")]
    for seen in ("data.arrived", "drift.detected", "model.deployed", "run-"):
        assert seen in timeline, seen
    assert "started: started" not in flat and f"started run {second.id}" in flat


def test_demo_without_the_loop(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path / "d"), "--epochs", "1",
                                      "--no-loop"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "the loop is skipped: --no-loop" in flat
    assert "timeline" not in flat and "models approve" in flat


def test_demo_on_medmnist(tmp_path: Path, shared_data: Path) -> None:
    npz = shared_data / "medmnist" / "breastmnist_28.npz"
    result = CliRunner().invoke(app, ["demo", "--data", str(npz), "--dir", str(tmp_path / "d"),
                                      "--epochs", "1"])
    assert result.exit_code == 0, result.output
    assert "imported" in result.output and "test metrics" in result.output
    flat = " ".join(result.output.split())
    assert "the loop is skipped" in flat and "without --data" in flat
