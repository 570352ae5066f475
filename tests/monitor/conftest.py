"""A real model, a real baseline and real traffic for the monitor tests.

RetinaMNIST (real fundus images, ../shared/data) written as PNG files; a resnet18 (512-d
embeddings, flip test-time augmentation) with random weights whose batch-norm statistics are
set on the reference images, so its features are well scaled. The baseline comes from the
pipeline's own builder over the validation and test splits (as the evaluate step makes it);
live traffic goes through the server's own functions (``serve.inputs.prepare`` and
``serve.batcher.forward``) into the capture store, so both sides are computed exactly as in
production. The training split plays in-distribution traffic.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medops.monitor import CaptureRecord, Feedback
from medops.monitor.baseline import Baseline, ReferenceSplit, build_baseline

CLASSES = ["grade0", "grade1", "grade2", "grade3", "grade4"]
POOL = 800  # in-distribution images (of the 1080 of the training split)


@dataclass
class World:
    profile: Any  # PreprocessProfile
    loaded: Any  # registry.LoadedModel
    baseline: Baseline
    baseline_file: Path
    reference_files: list[Path]
    pool: list[bytes]  # in-distribution PNG files (the training split)
    pool_labels: list[str]

    def records(self, blobs: Sequence[bytes], start: datetime, model: str = "m",
                version: str = "1", prefix: str = "r") -> list[CaptureRecord]:
        """Capture rows as the server makes them, one image per request, a second apart."""
        from medops.serve.batcher import forward
        from medops.serve.inputs import prepare

        prepared = [prepare(b, self.profile, 10_000_000) for b in blobs]
        probs, feats = forward(self.loaded, np.stack([p.x for p in prepared]))
        out = []
        for i, (p, pr, f) in enumerate(zip(prepared, probs, feats, strict=True)):
            out.append(CaptureRecord(
                request_id=f"{prefix}{i}", image=0, time=start + timedelta(seconds=i),
                model_name=model, model_version=version,
                predicted=self.loaded.classes[int(pr.argmax())], classes=self.loaded.classes,
                probabilities=pr.astype(float).tolist(), input_format=p.input_format,
                height=p.height, width=p.width, stats=p.stats, embedding=f.tolist()))
        return out


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def shifted(image: np.ndarray, contrast: float = 0.6, brightness: float = 60.0) -> np.ndarray:
    """A brightness/contrast change, as a different camera setting would give."""
    out = image.astype(np.float32) * contrast + brightness
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def retina(shared_data: Path) -> dict[str, np.ndarray]:
    with np.load(shared_data / "medmnist" / "retinamnist_28.npz") as d:
        return {k: d[k].reshape(len(d[k]), -1)[:, 0] if k.endswith("labels") else d[k]
                for k in d.files}


@pytest.fixture(scope="session")
def world(retina: dict[str, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> World:
    import torch

    from medops.config.enums import Architecture, FrameMode, Normalize, WindowMode
    from medops.preprocess import PreprocessProfile
    from medops.preprocess.transforms import preprocess_file
    from medops.registry import LoadedModel
    from medops.train import ModelSpec, build_model

    folder = tmp_path_factory.mktemp("retina")
    profile = PreprocessProfile(size=(28, 28), channels=3, window=WindowMode.AUTO,
                                normalize=Normalize.ZSCORE, frames=FrameMode.MIDDLE)
    splits = []
    reference_files: list[Path] = []
    for name in ("val", "test"):
        files = []
        for i, image in enumerate(retina[f"{name}_images"]):
            path = folder / f"{name}-{i}.png"
            path.write_bytes(png(image))
            files.append(path)
        reference_files += files
        x = np.stack([preprocess_file(p, None, profile) for p in files])
        splits.append(ReferenceSplit(name, x, retina[f"{name}_labels"].astype(np.int64),
                                     [(str(p), None) for p in files]))
    torch.manual_seed(0)
    model = build_model(ModelSpec(architecture=Architecture.RESNET18, in_channels=3,
                                  num_classes=len(CLASSES), small_input=False, flip_tta=True))
    # batch-norm statistics from 256 reference images (one pass, cumulative), no gradient step
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.concatenate([s.x for s in splits])[::2][:256]))
    model.eval()
    loaded = LoadedModel(model=model, classes=CLASSES, profile=profile, meta={})
    baseline = build_baseline(model, CLASSES, profile, splits, max_rows=1000, raw_sample=200,
                              meta={"test_metrics": _test_metrics(model, splits[1])})
    baseline_file = baseline.save(folder / "baseline.parquet")
    pool = [png(image) for image in retina["train_images"][:POOL]]
    return World(profile, loaded, baseline, baseline_file, reference_files, pool,
                 [CLASSES[int(i)] for i in retina["train_labels"][:POOL]])


def _test_metrics(model: Any, test: ReferenceSplit) -> dict[str, float]:
    from medops.evaluate import compute_metrics
    from medops.train import predict_proba

    flat = compute_metrics(test.labels, predict_proba(model, test.x), CLASSES).to_flat_dict()
    return {k: v for k, v in flat.items() if v == v}


@dataclass
class Monitored:
    """A project whose champion is the world's model, its baseline in the model folder."""

    project: Any
    world: World
    model: str
    version: str

    def capture(self, blobs: Sequence[bytes], start: datetime, prefix: str,
                labels: Sequence[str] | None = None) -> None:
        from medops.monitor import CaptureStore

        store = CaptureStore.under(self.project.artifacts)
        records = self.world.records(blobs, start, self.model, self.version, prefix)
        store.append(records)
        if labels is not None:
            store.add_feedback([Feedback(r.request_id, lab)
                                for r, lab in zip(records, labels, strict=True)])


@pytest.fixture(scope="session")
def monitored(world: World, tmp_path_factory: pytest.TempPathFactory) -> Monitored:
    from medops.project import Project
    from medops.registry import CHAMPION, package_model

    root = tmp_path_factory.mktemp("monitored") / "proj"
    Project.init(root, name="monitored")
    with (root / "medops.yaml").open("a") as f:  # in the file: `medops monitor` reads it too
        f.write("\nmonitor: {min_samples: 50, permutations: 300, quality: {min_labels: 30}}\n")
    project = Project.load(root)
    package = root / "package"
    package_model(world.loaded.model, CLASSES, world.profile, {}, package,
                  extra={"baseline": world.baseline_file})
    tracker = project.tracker
    run = tracker.start_run("monitor-test", {})
    tracker.log_artifact(run, package, "model")
    metrics = world.baseline.meta["test_metrics"]
    version = project.registry.register(
        run, f"{tracker.artifact_uri(run)}/model",
        {"test_accuracy": f"{metrics['test_accuracy']:.4f}",
         "test_auc": f"{metrics['test_auc']:.4f}"}, alias=CHAMPION)
    return Monitored(project, world, project.registry.name, version.version)


