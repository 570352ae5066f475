"""A small multi-label model registered in a real project, without a training run.

A resnet18 with random weights on 16 px grey images and three findings. Its stored thresholds
make two findings' decisions certain, whatever the weights: ``Cardiomegaly`` (threshold 0) is
always found, ``Effusion`` (threshold 1.5, above any sigmoid) never; ``Nodule`` falls at 0.5.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

FINDINGS = ["Cardiomegaly", "Effusion", "Nodule"]
THRESHOLDS = {"Cardiomegaly": 0.0, "Effusion": 1.5, "Nodule": 0.5}


def profile() -> Any:
    from medops.config.enums import FrameMode, Normalize, WindowMode
    from medops.preprocess import PreprocessProfile

    return PreprocessProfile(size=(16, 16), channels=1, window=WindowMode.AUTO,
                             normalize=Normalize.ZSCORE, frames=FrameMode.MIDDLE)


def model(seed: int = 0) -> Any:
    import torch

    from medops.config.enums import Task
    from medops.train import ModelSpec, build_model

    torch.manual_seed(seed)
    net = build_model(ModelSpec(architecture="resnet18", in_channels=1,
                                num_classes=len(FINDINGS), small_input=True,
                                task=Task.MULTILABEL))
    return net.eval()


def png(seed: int, size: int = 24, gain: float = 1.0) -> bytes:
    """A grey PNG of smooth structure and noise; ``gain`` scales its contrast."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.sin(xx / (2 + seed % 5)) + np.cos(yy / (3 + seed % 7)) + rng.normal(0, 0.3,
                                                                                  (size, size))
    arr = np.clip(128 + 50 * gain * base, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def register(project: Any, net: Any, folder: Path, *, alias: str | None = "champion",
             extra: dict[str, Path] | None = None,
             tags: dict[str, str] | None = None) -> str:
    """Package ``net`` with :data:`THRESHOLDS` and register it in ``project``; its version."""
    from medops.registry import package_model

    package = folder / "package"
    package_model(net, FINDINGS, profile(), {"thresholds": THRESHOLDS}, package, extra=extra)
    tracker = project.tracker
    run = tracker.start_run("multilabel-test", {})
    tracker.log_artifact(run, package, "model")
    version = project.registry.register(run, f"{tracker.artifact_uri(run)}/model",
                                        tags or {}, alias=alias)
    return str(version.version)
