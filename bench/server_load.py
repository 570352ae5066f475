"""`medops server` under dashboard-like load: 50 concurrent clients, p50/p95/p99 and req/s.

A real `medops server` (a subprocess, ``--workers`` processes) serves a project with a trained
model, several registered versions (one live, one rolled back, some pending), a handful of
runs (succeeded and failed), events and monitor results in its state. Each of ``--clients``
clients (httpx async, one keep-alive connection each, logged in as a viewer) loops over what a
dashboard page asks for: the run list, a run's detail, events, item counts, the quarantine,
the models, a model's versions, one version, the production history, monitor results, the
audit log, who am I; and, when the dashboard is installed, its pages (overview, runs, a model,
approvals, monitor, events), as a browser would with the session cookie.

Per the house rule a baseline is measured in the same run with the same clients: the same
loop against the unauthenticated ``/api/health`` (no credentials checked, no database), in
rounds that alternate with the API mix, pooled per variant, because these shared machines'
speed drifts from one minute to the next. The ratio says what authentication, the state
database and the MLflow registry cost over the bare HTTP stack. Goal: the API mix's p99 under
500 ms on this 2-core machine.

With the default ``--think 0`` each client sends its next request as soon as the answer
arrives: the server is saturated, and latency is mostly the wait behind the other clients.
``--think S`` makes each client pause about S seconds (0.5 S to 1.5 S) between requests, as a
person reading a page.

    .venv/bin/python bench/server_load.py --seconds 30 --clients 50

Without ``--project`` a throwaway project is made (one tiny training run, as the tests do).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serve_bench import free_port, start, stop

MEDOPS = str(Path(sys.executable).parent / "medops")
GOAL_P99_MS = 500.0


@dataclass
class Result:
    variant: str
    seconds: float = 0.0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    by_route: dict[str, list[float]] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float, values: list[float] | None = None) -> float:
        found = self.latencies if values is None else values
        return float(np.percentile(found, q)) * 1000 if found else float("nan")

    def add(self, other: Result) -> None:
        self.seconds += other.seconds
        self.errors += other.errors
        self.latencies += other.latencies
        for route, values in other.by_route.items():
            self.by_route.setdefault(route, []).extend(values)


# -- the project --------------------------------------------------------------------------
def make_project(root: Path) -> None:
    """A trained model, five versions (v2 live after a rollback from v3, v4 and v5 pending),
    runs that succeeded and failed, events and a day of hourly monitor results."""
    from medops.demo.synthetic import make_synthetic_dataset
    from medops.pipeline import PipelineRunner
    from medops.project import Project
    from medops.registry import ModelLifecycle
    from medops.storage import EventKind, RunStatus
    from medops.storage.monitoring import MonitorRecord, MonitorResults

    Project.init(root, name="load")
    shutil.rmtree(root / "data" / "raw")
    make_synthetic_dataset(root / "data" / "raw", n_patients=12, images_per_patient=2, size=32,
                           corrupt_examples=True)
    overrides = {"train.epochs": 1, "preprocess.size": [32, 32], "gate.min": 0.0,
                 "executor.workers": 2, "data.split.val": 0.25, "data.split.test": 0.25}
    project = Project.load(root, overrides)
    try:
        record = PipelineRunner(project).run()
        if record.status.value != "succeeded":
            raise SystemExit(f"pipeline failed: {record.error}")
        registry = project.registry
        v1 = registry.get("1")
        for _ in range(4):
            registry.register(v1.run_id or "", v1.source, dict(v1.tags), alias=None)
        lifecycle = ModelLifecycle(registry, project.state)
        for version in ("1", "2", "3"):
            lifecycle.approve(version, "bench-approver", f"reviewed v{version}")
        lifecycle.rollback("bench-approver", "drift on v3")
        state = project.state
        for i in range(12):
            run_id = f"run-bench-{i:02d}"
            state.create_run(run_id, "schedule", {"project": "load"}, ["ingest", "validate"])
            failed = i % 4 == 3
            state.finish_run(run_id, RunStatus.FAILED if failed else RunStatus.SUCCEEDED,
                             "step 'train' failed: out of memory" if failed else None)
            state.add_event(EventKind.DATA_ARRIVED, {"source": "bench", "new": i})
        results = MonitorResults(state.db)
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
        for hours in range(24):
            at = end - timedelta(hours=hours)
            results.record(MonitorRecord(
                model=project.config.model_name, version="2", window_start=at - timedelta(
                    hours=24), window_end=at, status="drift" if hours < 3 else "ok",
                n_current=200, n_reference=400, drift=hours < 3, min_p_value=0.01 + hours / 100,
                summary={"tests": {"mean_intensity": 0.01 + hours / 100}}))
    finally:
        project.close()


# -- the server ---------------------------------------------------------------------------
def start_server(root: Path, port: int, workers: int) -> Any:
    return start([MEDOPS, "server", "-C", str(root), "--port", str(port), "--workers",
                  str(workers), "--log-level", "warning"], dict(os.environ),
                 f"http://127.0.0.1:{port}/api/health", timeout=180)


def add_viewer(root: Path) -> tuple[str, str]:
    """A viewer made on the host, as `medops server users add` does: (name, password)."""
    from medops.project import Project
    from medops.server.auth import Authenticator, Role

    project = Project.load(root)
    try:
        name, password = f"bench-viewer-{secrets.token_hex(3)}", secrets.token_urlsafe(18)
        Authenticator(project.state.db, audit=project.state.audit).add_user(
            name, Role.VIEWER, password, by="bench/server_load.py")
    finally:
        project.close()
    return name, password


def login(url: str, name: str, password: str) -> str:
    with httpx.Client(base_url=url, timeout=60) as c:
        answer = c.post("/api/login", json={"user": name, "password": password})
        answer.raise_for_status()
        return str(answer.json()["token"])


def dashboard_paths(url: str, token: str, model: str) -> list[str]:
    """The dashboard's pages, if it is installed (answers HTML to a session cookie)."""
    pages = ["/", "/runs", f"/models/{model}", "/approvals", "/monitor", "/events"]
    with httpx.Client(base_url=url, cookies={"medops_session": token}, timeout=60) as c:
        return [p for p in pages if c.get(p).headers.get("content-type", "").startswith(
            "text/html")]


def api_paths(url: str, token: str) -> list[str]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as c:
        runs = c.get("/api/runs").json()
        models = c.get("/api/models").json()
    model = models[0]["name"]
    return ["/api/runs", f"/api/runs/{runs[0]['id']}", "/api/events", "/api/items",
            "/api/items/quarantine", "/api/models", f"/api/models/{model}/versions",
            f"/api/models/{model}/versions/2", f"/api/models/{model}/history",
            f"/api/monitor?model={model}", "/api/audit", "/api/me"]


# -- the load -----------------------------------------------------------------------------
def clients_for(url: str, token: str, n: int) -> list[httpx.AsyncClient]:
    """``n`` clients, one keep-alive connection each, made before any is timed: making an
    httpx client loads a TLS context (tens of milliseconds of CPU, even for http://), which
    would otherwise stall the other clients' requests on the shared event loop."""
    tls = ssl.create_default_context()
    return [httpx.AsyncClient(base_url=url, timeout=30, verify=tls,
                              cookies={"medops_session": token},
                              headers={"Authorization": f"Bearer {token}"},
                              limits=httpx.Limits(max_connections=1)) for _ in range(n)]


async def drive(clients: list[httpx.AsyncClient], paths: list[str], seconds: float,
                variant: str, record: bool = True, think: float = 0.0) -> Result:
    result = Result(variant)
    until = time.monotonic() + seconds

    async def loop(c: httpx.AsyncClient, offset: int) -> None:
        i = offset  # clients start at different routes, as different pages would
        if think:  # and at different moments: people do not click in step
            await asyncio.sleep(random.uniform(0, think))
        while time.monotonic() < until:
            path = paths[i % len(paths)]
            i += 1
            t = time.perf_counter()
            try:
                answer = await c.get(path)
                ok = answer.status_code == 200
            except httpx.HTTPError:
                ok = False
            took = time.perf_counter() - t
            if think:  # a person reading the page before the next one
                await asyncio.sleep(think * (0.5 + random.random()))
            if not record:
                continue
            if not ok:
                result.errors += 1
                continue
            result.latencies.append(took)
            result.by_route.setdefault(path.split("?")[0], []).append(took)

    started = time.monotonic()
    await asyncio.gather(*(loop(c, k) for k, c in enumerate(clients)))
    result.seconds = time.monotonic() - started
    return result


async def measure(url: str, token: str, mix: list[str], args: argparse.Namespace
                  ) -> dict[str, Result]:
    clients = clients_for(url, token, args.clients)
    try:
        await drive(clients, mix, args.warmup, "warm-up", record=False)  # connections open
        pooled = {"health": Result("baseline: GET /api/health (no auth, no DB)"),
                  "api": Result("dashboard mix (auth, state DB, MLflow registry)")}
        window = args.seconds / args.rounds
        for n in range(args.rounds):
            for key, paths in (("health", ["/api/health"]), ("api", mix)):
                part = await drive(clients, paths, window, key, think=args.think)
                pooled[key].add(part)
                print(f"  round {n + 1} {key:>6}: {part.rps:7.1f} req/s, p99 "
                      f"{part.pct(99):7.1f} ms, errors {part.errors}", flush=True)
        return pooled
    finally:
        for c in clients:
            await c.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, help="an existing project (else one is made)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="of load per variant, split in rounds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating windows per variant")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--think", type=float, default=0.0,
                        help="seconds each client waits between requests (0: none, the "
                             "server saturated)")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="server-load-"))
    root = args.project
    if root is None:
        root = tmp / "proj"
        started = time.monotonic()
        make_project(root)
        print(f"project made in {time.monotonic() - started:.0f} s: {root}", flush=True)
    viewer, password = add_viewer(root)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(root, port, args.workers)
    try:
        token = login(url, viewer, password)
        paths = api_paths(url, token)
        model = paths[6].split("/")[3]
        pages = dashboard_paths(url, token, model)
        mix = paths + pages
        print(f"medops server: {args.workers} worker(s); {args.clients} clients; mix of "
              f"{len(paths)} API routes and {len(pages)} dashboard pages", flush=True)
        pooled = asyncio.run(measure(url, token, mix, args))
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    report(pooled["health"], pooled["api"], args)


def report(base: Result, api: Result, args: argparse.Namespace) -> None:
    print(f"\n{args.clients} clients (think time {args.think:g} s), {args.workers} server "
          f"worker(s), {args.seconds:.0f} s per variant, load average after: "
          f"{os.getloadavg()[0]:.1f}\n")
    print(f"{'variant':<50} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'errors':>6}")
    for r in (base, api):
        print(f"{r.variant:<50} {r.rps:8.1f} {r.pct(50):8.1f} {r.pct(95):8.1f} "
              f"{r.pct(99):8.1f} {r.errors:6d}")
    print(f"\nratio dashboard mix / baseline: p50 x{api.pct(50) / base.pct(50):.2f}, p99 "
          f"x{api.pct(99) / base.pct(99):.2f}, throughput x{api.rps / base.rps:.2f}")
    print("\nper route (dashboard mix):")
    for route, values in sorted(api.by_route.items()):
        print(f"  {route:<48} n={len(values):6d} p50 {api.pct(50, values):7.1f} ms  p99 "
              f"{api.pct(99, values):7.1f} ms")
    verdict = "meets" if api.pct(99) < GOAL_P99_MS and not api.errors else "MISSES"
    print(f"\np99 {api.pct(99):.0f} ms with {api.errors} errors: {verdict} the goal "
          f"(p99 < {GOAL_P99_MS:.0f} ms, no errors)")


if __name__ == "__main__":
    main()
