"""Preprocessing throughput: a plain single-process loop vs ``preprocess_items`` on a pool.

Builds a temporary folder of real DICOM files (the NEMA WG04 HTJ2K and uncompressed sets from
../shared/data, pydicom's bundled JPEG / JPEG 2000 / JPEG-LS / RLE / native test files and the
SIIM chest radiographs), replicated with a new SOP Instance UID per copy so that every file has
its own content hash. Both variants run the same functions (read, resize, normalise, write the
cache entry) into a fresh cache each time; the pool timing includes starting the workers.

    .venv/bin/python bench/preprocess_throughput.py --files 320 --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medops.config.enums import FrameMode, Normalize, WindowMode
from medops.executor import LocalExecutor
from medops.executor.local import StartMethod
from medops.preprocess import (
    PreprocessCache,
    PreprocessProfile,
    PreprocessTask,
    preprocess_file,
    preprocess_items,
)

SHARED = Path(__file__).resolve().parents[1] / "../shared/data"
PYDICOM_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",
    "693_J2KI.dcm",
    "examples_ybr_color.dcm",
    "examples_jpeg2k.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle.dcm",
)


def sources() -> list[Path]:
    found = sorted((SHARED / "dicom/htj2k").glob("*.dcm"))
    found += sorted((SHARED / "dicom/nema_wg04_uncompressed").glob("*.dcm"))
    found += sorted((SHARED / "xray").glob("*.dcm"))
    for name in PYDICOM_FILES:
        path = get_testdata_file(name, download=False)
        if path:
            found.append(Path(path))
    if not found:
        sys.exit("no DICOM sources found")
    return found


def build(folder: Path, n_files: int) -> list[PreprocessTask]:
    src = sources()
    tasks = []
    for i in range(n_files):
        ds = pydicom.dcmread(src[i % len(src)])
        ds.SOPInstanceUID = generate_uid()  # new content, new hash, same pixels
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        tasks.append(PreprocessTask(key=path.name, uri=str(path), frame=None, content_hash=digest))
    return tasks


def plain_loop(
    tasks: list[PreprocessTask], profile: PreprocessProfile, root: Path
) -> tuple[float, float]:
    """Wall and CPU seconds of the same work in a for loop."""
    cache = PreprocessCache(root)
    start, cpu = time.perf_counter(), time.process_time()
    for task in tasks:
        array = preprocess_file(Path(task.uri), task.frame, profile)
        cache.put(profile, task.content_hash, task.frame, array)
    return time.perf_counter() - start, time.process_time() - cpu


def pooled(
    tasks: list[PreprocessTask], profile: PreprocessProfile, root: Path, executor: LocalExecutor
) -> float:
    start = time.perf_counter()
    report = preprocess_items(tasks, profile, PreprocessCache(root), executor)
    elapsed = time.perf_counter() - start
    if report.failures or report.computed != len(tasks):
        sys.exit(f"pool run failed: {report}")
    return elapsed


def cold_pool(
    tasks: list[PreprocessTask],
    profile: PreprocessProfile,
    root: Path,
    workers: int,
    method: StartMethod,
) -> tuple[float, float, str]:
    """Wall seconds with worker start-up, CPU seconds of parent and workers, start method."""
    cpu = time.process_time() + _children_cpu()
    with LocalExecutor(workers, start_method=method) as ex:
        wall = pooled(tasks, profile, root, ex)
        used = str(ex.start_method)
    # workers are reaped on close, so their CPU shows up only now (not for forkserver's
    # grandchildren, which its server process reaps)
    return wall, time.process_time() + _children_cpu() - cpu, used


def warm_pool(
    tasks: list[PreprocessTask], profile: PreprocessProfile, root: Path, workers: int
) -> float:
    with LocalExecutor(workers) as ex:
        pooled(tasks[: workers * 4], profile, root / "warmup", ex)  # start the workers
        return pooled(tasks, profile, root / "timed", ex)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's notes on odd test files are not the point here

    profile = PreprocessProfile(
        size=(args.size, args.size),
        channels=1,
        window=WindowMode.AUTO,
        normalize=Normalize.ZSCORE,
        frames=FrameMode.MIDDLE,
    )
    with tempfile.TemporaryDirectory(prefix="medops-bench-") as tmp:
        folder = Path(tmp) / "files"
        folder.mkdir()
        tasks = build(folder, args.files)
        size_mb = sum(Path(t.uri).stat().st_size for t in tasks) / 1e6
        print(
            f"{len(tasks)} DICOM files ({size_mb:.0f} MB) from {len(sources())} sources; "
            f"profile {profile.size} x{profile.channels}; {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        plain_loop(tasks[:10], profile, Path(tmp) / "warmup")  # imports, decoder plugins

        rows: list[dict[str, float]] = []
        method = ""
        for r in range(args.repeats):
            run = Path(tmp) / f"run{r}"
            load = os.getloadavg()[0]
            loop, loop_cpu = plain_loop(tasks, profile, run / "loop")
            cold, cold_cpu, method = cold_pool(tasks, profile, run / "cold", args.workers, "auto")
            warm = warm_pool(tasks, profile, run / "warm", args.workers)
            server, _, _ = cold_pool(tasks, profile, run / "fs", args.workers, "forkserver")
            rows.append(
                dict(
                    loop=loop,
                    loop_cpu=loop_cpu,
                    cold=cold,
                    cold_cpu=cold_cpu,
                    warm=warm,
                    server=server,
                    load=load,
                )
            )
            print(
                f"  repeat {r}: loop {loop:.2f}s (cpu {loop_cpu:.2f}s) | pool {cold:.2f}s "
                f"({method}, cold, cpu {cold_cpu:.2f}s), {warm:.2f}s warm, {server:.2f}s "
                f"forkserver cold | load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
            )

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    n, loop = len(tasks), med("loop")
    print(f"plain loop:                {n / loop:6.1f} images/s")
    for label, key in (
        (f"pool {args.workers}w, {method}, cold", "cold"),
        (f"pool {args.workers}w, warm workers", "warm"),
        (f"pool {args.workers}w, forkserver, cold", "server"),
    ):
        print(f"{label + ':':26} {n / med(key):6.1f} images/s  ratio {loop / med(key):.2f}")
    print(
        f"CPU seconds, loop vs pool (parent + workers): {med('loop_cpu'):.2f} vs "
        f"{med('cold_cpu'):.2f} (pool overhead {med('cold_cpu') / med('loop_cpu') - 1:+.1%})"
    )
    # On a shared machine the ratio is capped by the CPU the pool gets, not by medops: this
    # shows how many cores each variant actually obtained.
    print(
        f"cores obtained: loop {med('loop_cpu') / loop:.2f}, "
        f"pool {med('cold_cpu') / med('cold'):.2f} (of {args.workers} wanted)"
    )


if __name__ == "__main__":
    main()
