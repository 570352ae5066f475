"""Preprocess many items on an executor, through the cache, and load the results.

Workers read, transform and write their cache entries themselves; only a status string per
item travels back, so the parent stays idle and the pipes carry bytes, not images. Items whose
entry exists are skipped before any work is sent, which makes an unchanged re-run free and an
interrupted run resumable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medops.errors import DataError, MedopsError, PipelineError
from medops.executor.base import Executor
from medops.preprocess.cache import PreprocessCache
from medops.preprocess.profile import PreprocessProfile
from medops.preprocess.transforms import preprocess_file

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PreprocessTask:
    """One item to preprocess: ``uri`` is a local file path for now; ``frame`` None means
    the middle frame; ``content_hash`` (of the file's bytes) keys the cache."""

    key: str
    uri: str
    frame: int | None
    content_hash: str


@dataclass
class PreprocessReport:
    """``computed + cached + len(failures)`` is the number of tasks."""

    computed: int = 0
    cached: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.computed + self.cached + len(self.failures)


def preprocess_items(
    tasks: Sequence[PreprocessTask],
    profile: PreprocessProfile,
    cache: PreprocessCache,
    executor: Executor,
    progress: Progress | None = None,
) -> PreprocessReport:
    """Make sure every task has a cache entry for ``profile``; report what happened.

    A task that fails (unreadable file, unsupported image...) lands in ``failures`` with the
    reason; the others go on. Tasks sharing content and frame are computed once.
    """
    report = PreprocessReport()
    total = len(tasks)
    cache.write_profile(profile)
    pending: dict[tuple[str, int | None], list[PreprocessTask]] = {}
    for task in tasks:
        try:
            cached = cache.contains(profile, task.content_hash, task.frame)
        except ValueError as exc:  # a malformed content hash: this task's problem only
            report.failures[task.key] = str(exc)
            continue
        if cached:
            report.cached += 1
        else:
            pending.setdefault((task.content_hash, task.frame), []).append(task)
    done = report.cached + len(report.failures)
    if progress:
        progress(done, total)
    if not pending:
        return report

    work = [(group[0].uri, frame, content_hash) for (content_hash, frame), group in pending.items()]
    compute = functools.partial(_compute, profile, cache)
    try:
        for group, error in zip(pending.values(), executor.map(compute, work), strict=True):
            if error is None:
                report.computed += len(group)
            else:
                for task in group:
                    report.failures[task.key] = error
            done += len(group)
            if progress:
                progress(done, total)
    except BrokenExecutor as exc:
        raise PipelineError(
            f"a preprocessing worker died after {done} of {total} items (a crash in a native "
            "decoder, or out of memory); finished items are cached, so a re-run resumes; "
            "use executor.kind 'serial' to find the item"
        ) from exc
    log.info(
        "preprocess %s: %d computed, %d cached, %d failed",
        profile.fingerprint(),
        report.computed,
        report.cached,
        len(report.failures),
    )
    return report


def load_arrays(
    tasks: Sequence[PreprocessTask], profile: PreprocessProfile, cache: PreprocessCache
) -> np.ndarray:
    """The cached arrays of ``tasks`` stacked in task order: float32 (N, C, H, W)."""
    shape = (profile.channels, *profile.size)
    out = np.empty((len(tasks), *shape), dtype=np.float32)
    missing: list[str] = []
    for i, task in enumerate(tasks):
        array = cache.get(profile, task.content_hash, task.frame)
        if array is None or array.shape != shape:
            missing.append(task.key)
            continue
        out[i] = array
    if missing:
        raise DataError(
            f"{len(missing)} item(s) have no preprocessed array for profile "
            f"{profile.fingerprint()} (first: {', '.join(missing[:3])}); "
            "run the preprocess step first"
        )
    return out


def _compute(
    profile: PreprocessProfile, cache: PreprocessCache, item: tuple[str, int | None, str]
) -> str | None:
    """Worker side: preprocess one file into the cache; None on success, else the reason."""
    uri, frame, content_hash = item
    try:
        array = preprocess_file(Path(uri), frame, profile)
        cache.put(profile, content_hash, frame, array)
    except MedopsError as exc:
        return str(exc)
    except Exception as exc:  # a bug or a library failure on one file must not stop the run
        log.exception("unexpected error preprocessing %s", uri)
        return f"unexpected {type(exc).__name__}: {exc}"
    return None
