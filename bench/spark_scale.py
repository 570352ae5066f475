"""Spark at scale: preprocessing and batch inference, a plain loop vs the local pool vs Spark.

On the same real-format DICOM files (those of bench/preprocess_throughput.py, each copy with
its own SOP Instance UID: HTJ2K, uncompressed CT/MR, JPEG baseline chest radiographs, pydicom's
JPEG / JPEG 2000 / JPEG-LS / RLE files), in one run:

- preprocess (decode, window, resize, z-score, write the cache entry): a plain loop in this
  process, ``preprocess_items`` on the local process pool (2 workers), on Spark ``local[2]``,
  and on a standalone cluster (one master and one worker with 2 cores on 127.0.0.1);
- batch inference with a registered model (resnet18, trained one epoch on synthetic data by the
  pipeline): a bare loop (medops' preprocessing + ``predict_proba`` in batches of 32),
  ``batch_predict`` in this process, and ``batch_predict`` on Spark ``local[2]`` and on the
  cluster, each into a fresh output folder;
- the fixed cost of a Spark job: a map over two items on a warm session, and a session's
  start.

Every variant's output is checked against the loop's first (the same cache entries, byte for
byte; the same probabilities to 1e-5). Prints images/s, wall seconds and core-seconds per image,
and the ratios the issue's goals name. docs/scaling.md projects these figures to 10 and 100
nodes.

    .venv/bin/python bench/spark_scale.py --files 2000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.spark_cluster

from medops.config.enums import FrameMode, Normalize, WindowMode
from medops.executor import Executor, LocalExecutor
from medops.preprocess import (
    PreprocessCache,
    PreprocessProfile,
    PreprocessTask,
    preprocess_file,
    preprocess_items,
)
from preprocess_throughput import build, plain_loop, sources
from serve_bench import make_project

CORES = 2


@dataclass
class Timing:
    variant: str
    step: str
    images: int
    seconds: float
    cores: int

    @property
    def rate(self) -> float:
        return self.images / self.seconds

    def line(self, baselines: dict[str, float]) -> str:
        ratios = "  ".join(f"{self.rate / base:.2f}x {name}" for name, base in baselines.items())
        per_image = self.seconds / self.images * 1e3
        return (f"  {self.variant:34} {self.rate:7.1f} images/s  {per_image:6.1f} ms/image  "
                f"{per_image * self.cores:6.1f} core-ms/image  {ratios}")


def cache_digest(root: Path) -> dict[str, str]:
    """Every cache entry's path under ``root`` and the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.npy"))}


def preprocess_with(executor: Executor, tasks: list[PreprocessTask],
                    profile: PreprocessProfile, root: Path) -> float:
    started = time.perf_counter()
    report = preprocess_items(tasks, profile, PreprocessCache(root), executor)
    elapsed = time.perf_counter() - started
    if report.failures or report.computed != len(tasks):
        sys.exit(f"preprocess on {executor!r} failed: {report}")
    return elapsed


def bare_inference(loaded: Any, paths: list[Path], batch_size: int) -> tuple[float, np.ndarray]:
    from medops.train import predict_proba

    started = time.perf_counter()
    out = []
    for i in range(0, len(paths), batch_size):
        x = np.stack([preprocess_file(p, None, loaded.profile) for p in paths[i:i + batch_size]])
        out.append(predict_proba(loaded.model, x, batch_size=batch_size))
    return time.perf_counter() - started, np.concatenate(out)


def medops_inference(predictor: Any, source: Path, out: Path,
                     executor: Executor | None) -> tuple[float, np.ndarray]:
    import pandas as pd

    from medops.serve.batch import batch_predict

    started = time.perf_counter()
    summary = batch_predict(predictor, str(source), str(out), executor=executor)
    elapsed = time.perf_counter() - started
    if summary.failed or summary.predicted != summary.total:
        sys.exit(f"batch-predict failed: {summary.to_dict()}")
    table = pd.read_parquet(out / "predictions").sort_values("uri")
    return elapsed, table[[c for c in table.columns if c.startswith("p_")]].to_numpy()


def job_cost(executor: Executor, repeats: int = 5) -> float:
    """Median seconds of a Spark job over two trivial items on a warm session."""
    list(executor.map(abs, [1, -2]))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        list(executor.map(abs, [1, -2]))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def job_rate(executor: Executor, jobs: int = 128) -> float:
    """Jobs per second the driver completes when a map is split into ``jobs`` small
    partitions (the executor was planned for far more cores than it has)."""
    items = list(range(4 * jobs))  # 4 items per partition: the executor's minimum
    started = time.perf_counter()
    list(executor.map(abs, items))
    return jobs / (time.perf_counter() - started)


@contextmanager
def spark(master: str, conf: dict[str, str] | None = None,
          parallelism: int = CORES) -> Iterator[tuple[Executor, float]]:
    """A Spark executor on ``master`` with its session started, and the start's seconds."""
    from medops.executor.spark import SparkExecutor

    executor = SparkExecutor(master, conf, parallelism=parallelism)
    started = time.perf_counter()
    executor.session  # noqa: B018 - start it outside the timed maps
    try:
        yield executor, time.perf_counter() - started
    finally:
        executor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=128, help="preprocess output size (px)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-cluster", action="store_true",
                        help="leave out the standalone cluster (no Java here)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's notes on odd test files are not the point here
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    profile = PreprocessProfile(size=(args.size, args.size), channels=1, window=WindowMode.AUTO,
                                normalize=Normalize.ZSCORE, frames=FrameMode.MIDDLE)
    with tempfile.TemporaryDirectory(prefix="medops-spark-scale-") as tmp_name:
        tmp = Path(tmp_name)
        files = tmp / "files"
        files.mkdir()
        tasks = build(files, args.files)
        paths = [Path(t.uri) for t in tasks]
        size_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"{len(tasks)} DICOM files ({size_mb:.0f} MB) from {len(sources())} sources; "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        print("training the model for batch inference (one epoch, synthetic data)...", flush=True)
        project = make_project(tmp / "project", 64)
        from medops.serve.batch import ModelRef, Predictor

        predictor = Predictor.from_registry(
            project.registry, ModelRef.parse(None, project.config.model_name), args.batch_size)
        plain_loop(tasks[:10], profile, tmp / "warmup")  # imports, decoder plugins
        bare_inference(predictor.model, paths[:args.batch_size], args.batch_size)

        pre: list[Timing] = []
        inf: list[Timing] = []
        fixed: dict[str, tuple[float, float]] = {}
        n = len(tasks)

        loop_s, _ = plain_loop(tasks, profile, tmp / "pre-loop")
        pre.append(Timing("plain loop, 1 process", "preprocess", n, loop_s, 1))
        reference = cache_digest(tmp / "pre-loop")
        bare_s, expected = bare_inference(predictor.model, sorted(paths, key=str),
                                          args.batch_size)
        inf.append(Timing("bare loop, 1 process", "inference", n, bare_s, CORES))
        print(f"  loops done: preprocess {loop_s:.1f} s, inference {bare_s:.1f} s", flush=True)

        def check(step: str, variant: str, got: Any) -> None:
            same = got == reference if step == "preprocess" else np.allclose(got, expected,
                                                                              atol=1e-5)
            if not same:
                sys.exit(f"{variant}: {step} output differs from the loop's")

        with LocalExecutor(CORES) as pool:
            root = tmp / "pre-pool"
            pre.append(Timing(f"local pool, {CORES} workers", "preprocess", n,
                              preprocess_with(pool, tasks, profile, root), CORES))
            check("preprocess", "local pool", cache_digest(root))
        seconds, got = medops_inference(predictor, files, tmp / "inf-local", None)
        check("inference", "batch_predict, this process", got)
        inf.append(Timing("batch_predict, this process", "inference", n, seconds, CORES))

        masters: list[tuple[str, str, dict[str, str] | None]] = [
            (f"Spark local[{CORES}]", f"local[{CORES}]", None)]
        with ExitStack() as stack:
            if not args.no_cluster:
                from tests.spark_cluster import DRIVER_CONF, running_cluster

                cluster = stack.enter_context(running_cluster(tmp / "cluster"))
                masters.append((f"standalone cluster, 1 worker x {CORES}", cluster.url,
                                DRIVER_CONF))
            for label, master, conf in masters:
                with spark(master, conf) as (executor, start_s):
                    fixed[label] = (start_s, job_cost(executor))
                    root = tmp / f"pre-{len(fixed)}"
                    pre.append(Timing(label, "preprocess", n,
                                      preprocess_with(executor, tasks, profile, root), CORES))
                    check("preprocess", label, cache_digest(root))
                    seconds, got = medops_inference(predictor, files, tmp / f"inf-{len(fixed)}",
                                                    executor)
                    check("inference", label, got)
                    inf.append(Timing(label, "inference", n, seconds, CORES))
                print(f"  {label} done", flush=True)

        with spark(f"local[{CORES}]", parallelism=32) as (executor, _):
            rate = job_rate(executor)
        print(f"\npreprocess, {args.size}x{args.size} (outputs identical to the loop's):")
        for t in pre:
            print(t.line({"loop": pre[0].rate, "pool": pre[1].rate}))
        print(f"\nbatch inference, batch {args.batch_size} (probabilities equal to 1e-5):")
        for t in inf:
            print(t.line({"bare loop": inf[0].rate}))
        print("\nfixed cost of Spark:")
        for label, (start_s, job_s) in fixed.items():
            print(f"  {label:34} session start {start_s:5.1f} s (the JVM starts with the first)"
                  f"   a job over 2 items "
                  f"{job_s * 1e3:6.0f} ms")
        print(f"  the driver completes {rate:.1f} jobs/s (a map in 128 partitions of 4 trivial "
              f"items on local[{CORES}], planned for 32 cores)")
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
