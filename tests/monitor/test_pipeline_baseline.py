"""The pipeline writes the baseline: packed in the registered model folder, logged to MLflow."""

from __future__ import annotations

from typing import Any

import numpy as np

from medops.monitor.baseline import BASELINE_FILE, STAT_COLUMNS, Baseline


def test_registered_version_carries_its_baseline(trained_project: Any) -> None:
    project = trained_project.project
    version = project.registry.get("1")
    folder = project.registry.download("1")
    baseline = Baseline.load(folder / "artifacts" / BASELINE_FILE)
    frame = baseline.frame
    assert set(frame["split"]) == {"val", "test"}
    assert baseline.meta["splits"]["val"] + baseline.meta["splits"]["test"] == len(frame)
    assert baseline.classes == ["nodule", "normal"]
    assert set(STAT_COLUMNS) <= set(frame.columns)
    assert frame["raw_mean"].notna().all()  # a few images: every original file decoded
    emb = np.stack(frame["embedding"])
    assert emb.shape == (len(frame), 512) and np.isfinite(emb).all()
    probs = np.stack(frame["probabilities"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert round(baseline.meta["test_metrics"]["test_accuracy"], 4) == \
        float(version.tags["test_accuracy"])

    logged = project.tracker.client.list_artifacts(version.run_id, "evaluation")
    assert f"evaluation/{BASELINE_FILE}" in {a.path for a in logged}
