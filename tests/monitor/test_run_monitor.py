"""`run_monitor` and `medops monitor` on a real project: capture store, registry, MLflow,
state DB. Each test captures its traffic on its own day, so windows never overlap."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from medops.monitor.quality import assess
from medops.monitor.run import MonitorStatus, run_monitor
from medops.storage.monitoring import MonitorResults

from .conftest import CLASSES, Monitored, png, shifted

# The training split in a seeded random order: each test takes its own slice, so windows are
# random samples of the distribution (the file's order may group images of one patient).
_ORDER = np.random.default_rng(3).permutation(800)


def _pick(monitored: Monitored, start: int, stop: int) -> tuple[list[bytes], list[str]]:
    rows = _ORDER[start:stop]
    return ([monitored.world.pool[i] for i in rows],
            [monitored.world.pool_labels[i] for i in rows])


def _day(n: int) -> datetime:
    return datetime(2026, 2, n, 8, 0, tzinfo=timezone.utc)


def test_shifted_traffic_raises_one_event_per_window_and_a_report(
        monitored: Monitored, retina: dict[str, np.ndarray]) -> None:
    ws = monitored.project
    blobs = [png(shifted(img)) for img in retina["train_images"][-80:]]
    monitored.capture(blobs, _day(1), prefix="shift")
    end = _day(1) + timedelta(hours=1)

    result = run_monitor(ws, window="2h", now=end)
    assert result.status is MonitorStatus.DRIFT and result.detected
    assert "intensity" in result.reasons and result.n_current == 80
    assert result.event_id is not None
    events = ws.state.event_log("drift.detected")
    mine = [e for e in events if e.payload["window_end"] == end.isoformat()]
    assert len(mine) == 1
    payload = mine[0].payload
    assert payload["model"] == monitored.model and payload["version"] == monitored.version
    assert payload["window"] == "2h" and payload["n_current"] == 80
    assert payload["test"].startswith("intensity:raw_")
    assert not any("shift" in json.dumps(v) for v in payload.values())  # no request ids

    again = run_monitor(ws, window="2h", now=end)  # the agent's retry of the same slot
    assert again.detected and again.event_id is None
    assert len([e for e in ws.state.event_log("drift.detected")
                if e.payload["window_end"] == end.isoformat()]) == 1

    report = Path(str(result.report))
    text = report.read_text()
    assert report.is_file() and report.is_relative_to(ws.artifacts)
    assert text.count("src='data:image/png;base64,") >= 3  # histograms, embeddings, history
    assert "intensity:raw_mean" in text

    rows = MonitorResults(ws.state.db).history(monitored.model, monitored.version)
    row = next(r for r in rows if r.window_end == end)
    assert row.status == "drift" and row.drift and row.n_current == 80
    assert row.summary["group_min_p"]["intensity"] < 1e-6
    assert row.report == str(result.report)

    run_id = ws.registry.get(monitored.version).run_id
    history = ws.tracker.client.get_metric_history(run_id, "monitor_min_p_intensity")
    assert int(end.timestamp()) in {m.step for m in history}
    logged = ws.tracker.client.list_artifacts(run_id, f"monitor/{end:%Y%m%dT%H%M%SZ}")
    assert [Path(a.path).name for a in logged] == [report.name]


def test_in_distribution_traffic_raises_no_alarm(monitored: Monitored) -> None:
    ws = monitored.project
    blobs, labels = _pick(monitored, 0, 120)
    monitored.capture(blobs, _day(2), prefix="ok", labels=labels)
    result = run_monitor(ws, window="1d", now=_day(2) + timedelta(hours=2))
    assert result.status is MonitorStatus.OK, result.to_dict()["drift"]
    assert result.event_id is None and result.report is not None
    assert result.quality is not None and result.quality.n_labelled == 120
    assert result.quality.evaluated and not result.quality.degraded
    assert {c.name for c in result.quality.checks} >= {"accuracy", "auc"}


def test_feedback_showing_wrong_answers_is_a_quality_drop(monitored: Monitored) -> None:
    ws = monitored.project
    blobs, _ = _pick(monitored, 200, 260)
    records = monitored.world.records(blobs, _day(3))
    wrong = [CLASSES[(CLASSES.index(r.predicted) + 1) % len(CLASSES)] for r in records]
    monitored.capture(blobs, _day(3), prefix="wrong", labels=wrong)
    result = run_monitor(ws, window="1d", now=_day(3) + timedelta(hours=1))
    assert result.detected and result.reasons == ["quality"]
    assert result.quality is not None and result.quality.live["accuracy"] == 0.0
    assert "accuracy" in {c.name for c in result.quality.degraded}
    event = ws.state.event_log("drift.detected")[0]
    assert event.id == result.event_id and event.payload["reasons"] == ["quality"]


def test_too_few_images_give_no_verdict(monitored: Monitored) -> None:
    monitored.capture(_pick(monitored, 300, 310)[0], _day(4), prefix="few")
    result = run_monitor(monitored.project, window="1d", now=_day(4) + timedelta(hours=1))
    assert result.status is MonitorStatus.INSUFFICIENT and result.n_current == 10
    assert result.event_id is None and result.report is None
    assert "min_samples=50" in result.message


def test_cli_json(monitored: Monitored) -> None:
    from medops.cli.main import app

    now = datetime.now(timezone.utc)
    monitored.capture(_pick(monitored, 400, 460)[0], now - timedelta(minutes=20), prefix="cli")
    result = CliRunner().invoke(app, ["monitor", "--window", "1h", "--json", "-C",
                                      str(monitored.project.root)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    drifted = [t for t in out["drift"]["tests"] if t["drifted"]]
    assert out["status"] == "ok" and out["n_current"] == 60, drifted
    assert out["version"] == monitored.version and Path(out["report"]).is_file()
    names = {t["name"] for t in out["drift"]["tests"]}
    assert "embedding" in names and "intensity:raw_mean" in names

    bad = CliRunner().invoke(app, ["monitor", "--window", "soon", "-C",
                                   str(monitored.project.root)])
    assert bad.exit_code != 0 and "soon" in bad.output


def test_no_champion_means_nothing_to_monitor(tmp_path: Path) -> None:
    from medops.project import Project

    Project.init(tmp_path, name="empty")
    result = run_monitor(Project.load(tmp_path))
    assert result.status is MonitorStatus.NO_MODEL and "no champion" in result.message


def test_quality_needs_a_significant_drop() -> None:
    reference = {"test_accuracy": 0.90, "test_recall_a": 0.9, "test_recall_b": 0.9}
    rng = np.random.default_rng(0)

    def live(n: int, accuracy: float) -> tuple[list[str | None], np.ndarray]:
        truth = rng.integers(0, 2, n)
        correct = rng.random(n) < accuracy
        pred = np.where(correct, truth, 1 - truth)
        probs = np.stack([1 - pred * 0.8 - 0.1, pred * 0.8 + 0.1], axis=1)
        return [["a", "b"][t] for t in truth], probs

    labels, probs = live(60, 0.84)  # a little below the test value, on few labels: noise
    noisy = assess(labels, probs, ["a", "b"], reference, max_drop=0.05, min_labels=30,
                   alpha=0.05)
    assert noisy.evaluated and not noisy.degraded
    labels, probs = live(400, 0.6)
    real = assess(labels, probs, ["a", "b"], reference, max_drop=0.05, min_labels=30,
                  alpha=0.05)
    assert "accuracy" in {c.name for c in real.degraded}
    few = assess([*labels[:10], None, "unknown"], probs[:12], ["a", "b"], reference,
                 max_drop=0.05, min_labels=30, alpha=0.05)
    assert few.n_labelled == 10 and not few.evaluated and not few.checks


def test_version_without_baseline_says_so(monitored: Monitored, tmp_path: Path) -> None:
    from medops.monitor import CaptureStore
    from medops.registry import package_model

    ws = monitored.project
    world = monitored.world
    package_model(world.loaded.model, CLASSES, world.profile, {}, tmp_path / "old")
    run = ws.tracker.start_run("old-model", {})
    ws.tracker.log_artifact(run, tmp_path / "old", "model")
    old = ws.registry.register(run, f"{ws.tracker.artifact_uri(run)}/model", {}, alias=None)
    blobs, _ = _pick(monitored, 500, 560)
    CaptureStore.under(ws.artifacts).append(
        world.records(blobs, _day(5), monitored.model, old.version, "old"))
    result = run_monitor(ws, window="1d", now=_day(5) + timedelta(hours=1),
                         version=old.version)
    assert result.status is MonitorStatus.NO_BASELINE and result.n_current == 60
    assert "medops run" in result.message and result.event_id is None
