"""Per-minute serving figures: the ``serving_stats`` store, the collector, and a real server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest

from medops.project import Project
from medops.serve.stats import ServingStatsCollector
from medops.storage.engine import Database
from medops.storage.serving import ServingStats, ServingWindow

from .conftest import TOKEN, ServerThread, png_bytes, serve_config, wait_ready

T0 = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)


def window(start: datetime, instance: str, requests: int, p99: float, version: str = "1",
           errors_4xx: int = 0, errors_5xx: int = 0) -> ServingWindow:
    return ServingWindow(model="m", version=version, start=start, requests=requests,
                         errors_4xx=errors_4xx, errors_5xx=errors_5xx, p50_ms=p99 / 4,
                         p95_ms=p99 / 2, p99_ms=p99, max_ms=p99 * 2, instance=instance)


def test_store_replaces_a_rewritten_minute_and_merges_processes(state_url: str) -> None:
    db = Database(state_url)
    try:
        store = ServingStats(db)
        minute = timedelta(minutes=1)
        store.record(window(T0, "a:1", 5, 40.0))
        store.record(window(T0, "a:1", 9, 50.0, errors_4xx=2),  # the full minute, later
                     window(T0, "b:2", 3, 80.0, version="2", errors_5xx=1),
                     window(T0 + minute, "a:1", 4, 20.0),
                     window(T0 + 2 * minute, "a:1", 1, 10.0))
        store.record(ServingWindow(model="other", version=None, start=T0, requests=1,
                                   errors_4xx=0, errors_5xx=0, p50_ms=None, p95_ms=None,
                                   p99_ms=None, max_ms=None))

        series = store.series("m", since=T0, until=T0 + 2 * minute)
        assert [w.start for w in series] == [T0, T0 + minute]
        first = series[0]
        assert (first.requests, first.errors_4xx, first.errors_5xx) == (12, 2, 1)
        assert first.p99_ms == 80.0 and first.p50_ms == 20.0  # the highest of the processes
        assert first.version == "1"  # the version that answered most requests
        assert first.error_rate == pytest.approx(3 / 12)
        assert series[1].instance == "a:1" and series[1].requests == 4
        assert [w.start for w in store.series("m", since=T0 + minute)] == \
            [T0 + minute, T0 + 2 * minute]
        assert store.series("other", since=T0)[0].version is None
    finally:
        db.close()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_collector_windows_percentiles_and_bounded_memory(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'state.db'}")
    store = ServingStats(db)
    start = T0.timestamp()
    clock = Clock(start + 5)
    stats = ServingStatsCollector(store, "m", max_samples=1000, clock=clock, instance="t:1")
    stats.set_version("3")
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(-4, 0.5, 800)  # seconds
    for i, seconds in enumerate(latencies):
        stats.observe(404 if i % 10 == 0 else 503 if i % 25 == 1 else 200, float(seconds))
    assert stats.flush() == 1  # the current minute so far
    clock.now = start + 65  # the next minute
    for _ in range(3000):  # more than max_samples: counted exactly, sampled for latency
        stats.observe(200, 0.010)
    stats.observe(500, 0.010)
    assert stats.flush() == 2
    assert len(stats._windows) == 1  # the ended minute left memory once written
    assert all(len(w.latencies) <= 1000 for w in stats._windows.values())

    first, second = store.series("m", since=T0)
    ms = latencies * 1000
    assert (first.requests, first.errors_4xx, first.errors_5xx) == (800, 80, 32)
    assert first.p50_ms == pytest.approx(np.percentile(ms, 50))
    assert first.p95_ms == pytest.approx(np.percentile(ms, 95))
    assert first.p99_ms == pytest.approx(np.percentile(ms, 99))
    assert first.max_ms == pytest.approx(ms.max())
    assert first.version == "3" and first.instance == "t:1"
    assert (second.requests, second.errors_5xx) == (3001, 1)
    assert second.p99_ms == pytest.approx(10.0)
    db.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ServingStats]:
    """A store of its own (the project's state is shared with `medops serve` tests)."""
    db = Database(f"sqlite:///{tmp_path / 'stats.db'}")
    yield ServingStats(db)
    db.close()


def test_a_serving_process_writes_its_minutes_and_flushes_on_shutdown(
        served_project: Project, store: ServingStats) -> None:
    """Real uvicorn, good and bad requests, a forced flush, then shutdown writes the rest."""
    from medops.monitor import CaptureStore
    from medops.serve import create_app

    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    app = create_app(served_project.registry, serve_config(capture=False),
                     capture=CaptureStore.under(served_project.artifacts), token=TOKEN,
                     stats=store)
    name = served_project.config.model_name
    auth = {"authorization": f"Bearer {TOKEN}"}
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        wait_ready(c)
        for _ in range(3):
            r = c.post(f"/v1/models/{name}/predict", content=png_bytes(),
                       headers={**auth, "content-type": "image/png"})
            assert r.status_code == 200, r.text
        assert c.post(f"/v1/models/{name}/predict", content=b"not an image",
                      headers={**auth, "content-type": "image/png"}).status_code == 400
        assert c.post(f"/v1/models/{name}/predict", content=png_bytes(),
                      headers={"content-type": "image/png"}).status_code == 401
        for _ in range(5):  # health checks are not traffic
            assert c.get("/ping").status_code == 200
        collector = app.state.medops.stats
        assert collector.flush() >= 1
        now = store.series(name, since)
        assert sum(w.requests for w in now) == 5
        assert sum(w.errors_4xx for w in now) == 2 and sum(w.errors_5xx for w in now) == 0
        assert all(w.p99_ms is not None and w.p99_ms > 0 for w in now)
        assert {w.version for w in now} == {"1"}
        r = c.post(f"/v1/models/{name}/predict", content=png_bytes(),
                   headers={**auth, "content-type": "image/png"})
        assert r.status_code == 200
    # the server stopped: its lifespan wrote the last request without a flush from here
    assert sum(w.requests for w in store.series(name, since)) == 6


def test_server_errors_are_counted_apart(served_project: Project, store: ServingStats) -> None:
    """A server whose model cannot load answers 503: those are 5xx, not client errors."""
    from medops.registry import ModelRegistry
    from medops.serve import create_app

    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    registry = ModelRegistry(served_project.tracker.client, "no-such-model",
                             served_project.artifacts / "models")
    app = create_app(registry, serve_config(), stats=store)
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(4):
            r = c.post("/v1/models/no-such-model/predict", content=png_bytes(),
                       headers={"content-type": "image/png"})
            assert r.status_code == 503, r.text
    (only,) = store.series("no-such-model", since)
    assert (only.requests, only.errors_4xx, only.errors_5xx) == (4, 0, 4)
    assert only.version is None
