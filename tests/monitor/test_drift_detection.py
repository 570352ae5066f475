"""Drift tests on real images through a real model: the baseline matches the server's
features, shifted traffic is caught, in-distribution traffic rarely raises an alarm."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medops.config.monitor import MonitorConfig
from medops.monitor.drift import compare, min_permutations, thresholds
from medops.monitor.features import Features, extract, informative

from .conftest import CLASSES, World


def _frame(world: World, blobs: list[bytes]) -> pd.DataFrame:
    from datetime import datetime, timezone

    records = world.records(blobs, datetime(2026, 1, 1, tzinfo=timezone.utc))
    return pd.DataFrame([r.row() for r in records])


@pytest.fixture(scope="session")
def reference(world: World) -> Features:
    return extract(world.baseline.frame, CLASSES)


@pytest.fixture(scope="session")
def pool(world: World) -> Features:
    """Every in-distribution image (the training split) through the server's functions."""
    return extract(_frame(world, world.pool), CLASSES)


def _window(f: Features, rows: np.ndarray) -> Features:
    return Features({k: v[rows] for k, v in f.scalars.items()},
                    None if f.embeddings is None else f.embeddings[rows], f.probabilities[rows])


def _check(reference: Features, current: Features, alpha: float, permutations: int) -> object:
    tested = informative(reference)
    return compare({k: reference.scalars[k] for k in tested},
                   {k: current.scalars[k] for k in tested},
                   reference.embeddings, current.embeddings, alpha, permutations)


def test_baseline_features_equal_the_servers(world: World) -> None:
    frame = world.baseline.frame
    assert list(frame["split"].unique()) == ["val", "test"] and len(frame) == 520
    served = _frame(world, [p.read_bytes() for p in world.reference_files[:40]])
    ours = frame.iloc[:40].reset_index(drop=True)
    pre = [c for c in served.columns if c.startswith("pre_")]
    np.testing.assert_allclose(ours[pre].to_numpy(float), served[pre].to_numpy(float),
                               rtol=1e-5, atol=1e-5)
    decoded = ours["raw_mean"].notna().to_numpy()
    assert decoded.any()
    raw = [c for c in served.columns if c.startswith("raw_")]
    np.testing.assert_allclose(ours.loc[decoded, raw].to_numpy(float),
                               served.loc[decoded, raw].to_numpy(float), rtol=1e-6)
    emb_ours, emb_served = np.stack(ours["embedding"]), np.stack(served["embedding"])
    assert emb_ours.shape == (40, 512)
    np.testing.assert_allclose(emb_ours, emb_served, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.stack(ours["probabilities"]),
                               np.stack(served["probabilities"]), atol=1e-5)
    assert world.baseline.meta["raw_rows"] == 200 and world.baseline.meta["embedding_dim"] == 512


def test_brightness_contrast_shift_is_detected(world: World, retina: dict[str, np.ndarray],
                                              reference: Features) -> None:
    from .conftest import png, shifted

    blobs = [png(shifted(img)) for img in retina["train_images"][:100]]
    report = _check(reference, extract(_frame(world, blobs), CLASSES), 0.05, 300)
    assert report.drift  # type: ignore[attr-defined]
    drifted = {t.name for t in report.drifted}  # type: ignore[attr-defined]
    assert {"intensity:raw_mean", "intensity:raw_max"} <= drifted


def test_false_alarm_rate_of_in_distribution_windows(reference: Features,
                                                     pool: Features) -> None:
    """50 windows of 100 images from the training split (never in the baseline): the share
    raising an alarm stays at or under the configured p-value."""
    alpha = MonitorConfig().p_value
    rng = np.random.default_rng(7)
    alarms = 0
    windows = 50
    for _ in range(windows):
        rows = rng.choice(pool.n, 100, replace=False)
        alarms += bool(_check(reference, _window(pool, rows), alpha, 300).drift)  # type: ignore[attr-defined]
    assert alarms / windows <= alpha, f"{alarms} false alarms in {windows} windows"


def test_each_group_gets_its_share_of_alpha() -> None:
    names = [f"intensity:f{i}" for i in range(18)] + ["embedding"] + \
        [f"prediction:p_{c}" for c in CLASSES]
    limits = thresholds(names, 0.05)
    assert sum(limits) == pytest.approx(0.05)
    assert limits[18] == pytest.approx(0.05 / 3)  # the MMD is not diluted by 18 statistics
    assert 1 / (min_permutations(limits[18]) + 1) < limits[18] / 4


def test_embedding_shift_alone_fires_even_with_few_permutations() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 64)).astype(np.float32)
    cur = rng.normal(size=(150, 64)).astype(np.float32)
    cur[:, :8] += 1.0  # a shift in a few directions of the embedding space
    scalars = {f"intensity:f{i}": rng.normal(size=300) for i in range(18)}
    current = {k: rng.normal(size=150) for k in scalars}
    report = compare(scalars, current, ref, cur, alpha=0.05, n_permutations=20)
    assert [t.name for t in report.drifted] == ["embedding"]
    same = compare(scalars, current, ref, rng.normal(size=(150, 64)), alpha=0.05,
                   n_permutations=20)
    assert not same.drift
