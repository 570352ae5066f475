"""Drift check over 10,000 captured requests (goal: <= 5 s).

A temporary project whose champion (a resnet18, 512-d embeddings) has a 1,000-row baseline in
its model folder; 10,000 capture rows written through ``CaptureStore.append`` in 10 files (as
the server's writer flushes them), each with 18 intensity statistics, 5 class probabilities
and a 512-d embedding. Timed, median of ``--repeats``:

* ``run_monitor`` end to end: read the window, 23 KS tests, the MMD (1,000 x 1,000 rows after
  subsampling, ``--permutations``), quality over 2,000 feedback labels, the HTML report with
  its plots, the row in the state DB and the MLflow logging;
* its parts: reading the window (Parquet and feedback join), the tests alone (``compare``);
* the reference: reading the same Parquet files with pyarrow alone, and a loop of
  ``scipy.stats.ks_2samp`` over the same 23 features -- what any drift check pays at least.

    python bench/drift_check.py --rows 10000 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medops.monitor import STAT_NAMES, CaptureRecord, CaptureStore, Feedback
from medops.monitor.baseline import Baseline

CLASSES = ["a", "b", "c", "d", "e"]
END = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def _rows(rng: np.random.Generator, n: int) -> dict[str, Any]:
    emb = np.maximum(rng.normal(0.3, 0.5, size=(n, 512)), 0).astype(np.float32)  # post-ReLU
    logits = rng.normal(size=(n, len(CLASSES)))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    stats = {f"{p}_{s}": rng.normal(i, 1.0 + i / 10, size=n)
             for i, (p, s) in enumerate((p, s) for p in ("pre", "raw") for s in STAT_NAMES)}
    return {"embedding": emb, "probabilities": probs, "stats": stats}


def setup(root: Path, n_rows: int, permutations: int) -> Any:
    import torch

    from medops.config.enums import Architecture, FrameMode, Normalize, WindowMode
    from medops.preprocess import PreprocessProfile
    from medops.project import Project
    from medops.registry import CHAMPION, package_model
    from medops.train import ModelSpec, build_model

    rng = np.random.default_rng(0)
    Project.init(root, name="bench")
    with (root / "medops.yaml").open("a") as f:
        f.write(f"\nmonitor: {{permutations: {permutations}}}\n")
    project = Project.load(root)
    ref = _rows(rng, 1000)
    frame = pd.DataFrame({"split": "val", "label": rng.choice(CLASSES, 1000),
                          "predicted": [CLASSES[i] for i in ref["probabilities"].argmax(1)],
                          "probabilities": list(ref["probabilities"]),
                          "embedding": list(ref["embedding"]), **ref["stats"]})
    baseline = Baseline(frame, {"classes": CLASSES, "test_metrics": {"test_accuracy": 0.25}})
    baseline_file = baseline.save(root / "baseline.parquet")
    torch.manual_seed(0)
    model = build_model(ModelSpec(Architecture.RESNET18, 3, len(CLASSES), small_input=False))
    profile = PreprocessProfile(size=(28, 28), channels=3, window=WindowMode.AUTO,
                                normalize=Normalize.ZSCORE, frames=FrameMode.MIDDLE)
    package_model(model.eval(), CLASSES, profile, {}, root / "package",
                  extra={"baseline": baseline_file})
    run = project.tracker.start_run("bench", {})
    project.tracker.log_artifact(run, root / "package", "model")
    version = project.registry.register(run, f"{project.tracker.artifact_uri(run)}/model",
                                        {"test_accuracy": "0.25"}, alias=CHAMPION)
    project.registry.download(version.version)  # the server would have fetched it already

    store = CaptureStore.under(project.artifacts)
    cur = _rows(rng, n_rows)
    start = END - timedelta(hours=12)
    per_file = n_rows // 10
    for part in range(10):
        records = []
        for i in range(part * per_file, (part + 1) * per_file):
            records.append(CaptureRecord(
                request_id=f"r{i}", image=0, time=start + timedelta(seconds=4 * i),
                model_name=project.registry.name, model_version=version.version,
                predicted=CLASSES[int(cur["probabilities"][i].argmax())], classes=CLASSES,
                probabilities=cur["probabilities"][i].tolist(), input_format="png",
                height=28, width=28, stats={k: float(v[i]) for k, v in cur["stats"].items()},
                embedding=cur["embedding"][i].tolist()))
        store.append(records)
    store.add_feedback([Feedback(f"r{i}", CLASSES[i % 5]) for i in range(0, n_rows, 5)])
    return project


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--permutations", type=int, default=500)
    args = parser.parse_args()

    import pyarrow.parquet as pq
    from scipy import stats

    from medops.monitor.baseline import BASELINE_FILE
    from medops.monitor.drift import compare
    from medops.monitor.features import extract, informative
    from medops.monitor.run import run_monitor

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        project = setup(Path(tmp) / "proj", args.rows, args.permutations)
        print(f"setup: {time.perf_counter() - t0:.1f}s ({args.rows} captured rows, 10 files)")
        store = CaptureStore.under(project.artifacts)
        files = sorted((store.folder / "requests").rglob("*.parquet"))

        full, result = timed(lambda: run_monitor(project, window="24h", now=END), args.repeats)
        assert result.n_current == args.rows, result.message
        read, frame = timed(lambda: store.read(END - timedelta(hours=24), END), args.repeats)
        baseline = Baseline.load(project.registry.download(result.version) / "artifacts"
                                 / BASELINE_FILE)
        ref, cur = extract(baseline.frame, CLASSES), extract(frame, CLASSES)
        keys = informative(ref)
        tests, _ = timed(lambda: compare({k: ref.scalars[k] for k in keys},
                                         {k: cur.scalars[k] for k in keys}, ref.embeddings,
                                         cur.embeddings, 0.05, args.permutations),
                         args.repeats)
        raw_read, _ = timed(lambda: [pq.read_table(f) for f in files], args.repeats)
        ks_loop, _ = timed(lambda: [stats.ks_2samp(ref.scalars[k], cur.scalars[k])
                                    for k in keys], args.repeats)

    print(f"status {result.status.value}, {len(keys)} KS tests + MMD, "
          f"{result.quality.n_labelled if result.quality else 0} feedback labels")
    rows = [("run_monitor, end to end (report, DB, MLflow)", full),
            ("  read the window (CaptureStore.read)", read),
            ("  the tests alone (compare: KS + MMD)", tests),
            ("reference: pyarrow read_table of the files", raw_read),
            ("reference: scipy ks_2samp loop", ks_loop)]
    for name, seconds in rows:
        print(f"{name:<48} {seconds:7.3f} s  x{seconds / raw_read:6.1f} of pyarrow read")
    print(f"goal <= 5 s: {'met' if full <= 5 else 'NOT met'} ({full:.2f} s)")


if __name__ == "__main__":
    main()
