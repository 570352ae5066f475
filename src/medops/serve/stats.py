"""Per-minute serving figures for the dashboard, written to ``serving_stats`` in the background.

The request path only appends a latency and bumps counters under a lock (no I/O, no sorting);
a daemon thread computes the percentiles and writes the windows every ``flush_seconds``: the
minutes that ended, and the current one so far (rewritten until it ends, so a dashboard is at
most ``flush_seconds`` behind). ``close()`` writes everything left, at shutdown.

Latencies are kept exactly up to ``max_samples`` a window (20,000: 333 requests a second);
past that a uniform reservoir sample of that size stands for them, so memory stays bounded and
the percentiles stay unbiased, while the counts stay exact. If the database cannot be reached
the windows wait for the next attempt, at most ``max_pending`` of them (the oldest go first).
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from medops.errors import MedopsError
from medops.storage.serving import ServingStats, ServingWindow

log = logging.getLogger(__name__)

#: the routes whose requests are counted: predictions and feedback, not health checks,
#: metrics scrapes or the docs (a load balancer's /ping every few seconds would drown them)
COUNTED_ROUTES = frozenset({"/invocations", "/v1/models/{name}/predict", "/v1/feedback"})


@dataclass
class _Window:
    start: float  # epoch seconds, on a window boundary
    version: str | None
    requests: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds
    rng: random.Random = field(default_factory=random.Random)


class ServingStatsCollector:
    """Counts and latencies of one serving process for ``model``, written by a thread."""

    def __init__(self, store: ServingStats, model: str, *, window_seconds: float = 60.0,
                 flush_seconds: float = 10.0, max_samples: int = 20_000,
                 max_pending: int = 1_440, instance: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.model = model
        self.window_seconds = window_seconds
        self.flush_seconds = flush_seconds
        self.max_samples = max_samples
        self.max_pending = max_pending
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.clock = clock
        self.version: str | None = None
        self._windows: dict[tuple[float, str | None], _Window] = {}
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one writer at a time: the thread or flush()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def set_version(self, version: str) -> None:
        """The version answering from now on (requests before it count for the previous)."""
        self.version = version

    def observe(self, status: int, seconds: float) -> None:
        """One answered request: its status code and latency. Cheap; called per request."""
        now = self.clock()
        start = now - now % self.window_seconds
        key = (start, self.version)
        with self._lock:
            w = self._windows.get(key)
            if w is None:
                w = self._windows[key] = _Window(start, self.version)
            w.requests += 1
            if 400 <= status < 500:
                w.errors_4xx += 1
            elif status >= 500:
                w.errors_5xx += 1
            if len(w.latencies) < self.max_samples:
                w.latencies.append(seconds)
            else:  # reservoir sampling (Vitter's algorithm R): each latency kept equally likely
                slot = w.rng.randrange(w.requests)
                if slot < self.max_samples:
                    w.latencies[slot] = seconds

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="medops-serving-stats",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and write every window, the current one included."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self.flush()

    def flush(self) -> int:
        """Write every window now (finished ones are then dropped from memory); how many
        rows were written, 0 when the store refused them (they are kept for a retry)."""
        with self._flush_lock:
            now = self.clock()
            with self._lock:  # copies, so that the counts agree with each other
                snapshot = [(key, w, _Window(w.start, w.version, w.requests, w.errors_4xx,
                                             w.errors_5xx, list(w.latencies)))
                            for key, w in self._windows.items()]
            windows = [self._summary(copy) for _, _, copy in snapshot]
            if not windows:
                return 0
            try:
                self.store.record(*windows)
            except MedopsError as exc:  # the database is away: keep them, try again later
                log.warning("serving stats not written (%d windows kept for the next try): %s",
                            len(windows), exc)
                self._trim()
                return 0
            with self._lock:
                for key, w, copy in snapshot:
                    # a window that ended and got no request since the snapshot is done
                    ended = w.start + self.window_seconds <= now
                    if ended and w.requests == copy.requests and self._windows.get(key) is w:
                        del self._windows[key]
            return len(windows)

    def _trim(self) -> None:
        with self._lock:
            excess = len(self._windows) - self.max_pending
            for key in sorted(self._windows)[:max(0, excess)]:
                del self._windows[key]

    def _summary(self, w: _Window) -> ServingWindow:
        p50 = p95 = p99 = top = None
        if w.latencies:
            ms = np.asarray(w.latencies, dtype=np.float64) * 1000.0
            p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
            top = float(ms.max())
        return ServingWindow(model=self.model, version=w.version,
                             start=datetime.fromtimestamp(w.start, timezone.utc),
                             requests=w.requests, errors_4xx=w.errors_4xx,
                             errors_5xx=w.errors_5xx, p50_ms=p50, p95_ms=p95, p99_ms=p99,
                             max_ms=top, instance=self.instance, seconds=self.window_seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # never let the thread die: the next flush may work
                log.exception("serving stats flush failed")
