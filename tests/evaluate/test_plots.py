"""The plots are written as real PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from medops.evaluate import compute_metrics, plot_confusion_matrix, plot_roc_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_confusion_matrix_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 50)
    probs = rng.dirichlet(np.ones(3), 50)
    m = compute_metrics(y, probs, ["normal", "benign", "malignant"])
    out = plot_confusion_matrix(m, tmp_path / "sub" / "cm.png")
    assert out == tmp_path / "sub" / "cm.png"
    _check_png(out)
    _check_png(plot_confusion_matrix(m, tmp_path / "cm_norm.png", normalize=True))


def test_roc_png_binary_and_multiclass_with_absent_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, 40), 0, 1)
    _check_png(plot_roc_curves(y, np.stack([1 - p1, p1], 1), ["neg", "pos"], tmp_path / "b.png"))
    y3 = rng.integers(0, 2, 40)  # class 2 never occurs: its curve is undefined, not an error
    probs = rng.dirichlet(np.ones(3), 40)
    _check_png(plot_roc_curves(y3, probs, ["a", "b", "c"], tmp_path / "m.png"))
