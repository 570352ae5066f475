"""Serving throughput and latency: a bare forward loop, `medops serve`, `mlflow models serve`.

One run on loopback, the same registered model for all three:

(a) bare: ``preprocess_bytes`` + ``predict_proba`` on one image at a time, in a loop, in this
    process -- no HTTP, no batching: the floor for a single request's latency;
(b) ``medops serve`` (a subprocess; micro-batching, capture on as by default);
(c) ``mlflow models serve -m models:/NAME@champion --env-manager local`` (a subprocess, its
    defaults), fed the pyfunc's documented input: ``dataframe_split`` JSON with the file bytes
    base64-encoded in the binary column ``image``.

(b) and (c) are driven by the same load generator: C concurrent clients (asyncio, one
keep-alive connection each, raw HTTP/1.1 so that the generator's own CPU stays small), each
sending the next request when its answer arrives. Both servers run for the whole benchmark;
each concurrency level is measured in ``--rounds`` short windows that alternate the variants
(and at 1 client the bare loop too), pooled per variant, because the speed of these shared
machines drifts by 10-20 % from one minute to the next.
Every request sends the same DICOM file (pydicom's CT_small.dcm, 128x128, resized by the
model's profile). Both servers' answers are checked against the bare model's probabilities.

    .venv/bin/python bench/serve_bench.py --seconds 10 --levels 1 8 64

Without ``--project`` a throwaway project is made: synthetic DICOM, one epoch of resnet18 at
``--size``, registered and made champion, as the pipeline does.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

VENV_BIN = Path(sys.executable).parent


@dataclass
class Result:
    variant: str
    clients: int
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    server_cores: float | None = None  # CPU seconds per second the server obtained

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def make_project(root: Path, size: int) -> Any:
    from medops.demo.synthetic import make_synthetic_dataset
    from medops.pipeline import PipelineRunner
    from medops.project import Project
    from medops.registry import CHAMPION

    Project.init(root, name="bench")
    shutil.rmtree(root / "data" / "raw")
    make_synthetic_dataset(root / "data" / "raw", n_patients=12, images_per_patient=3,
                           size=size)
    project = Project.load(root, {"train.epochs": 1, "preprocess.size": [size, size],
                                  "gate.min": 0.0, "executor.workers": 2,
                                  "data.split.val": 0.2, "data.split.test": 0.25})
    record = PipelineRunner(project).run()
    if record.status.value != "succeeded":
        raise SystemExit(f"pipeline failed: {record.error}")
    project.registry.client.set_registered_model_alias(project.config.model_name, CHAMPION,
                                                       project.registry.versions()[0].version)
    return project


def bare_loop(loaded: Any, blob: bytes, seconds: float) -> Result:
    from medops.preprocess import preprocess_bytes
    from medops.train import predict_proba

    for _ in range(20):  # warm-up
        predict_proba(loaded.model, preprocess_bytes(blob, loaded.profile)[None])
    latencies = []
    started, cpu = time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        predict_proba(loaded.model, preprocess_bytes(blob, loaded.profile)[None])
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - started
    return Result("bare forward loop", 1, len(latencies), 0, wall, latencies,
                  (time.process_time() - cpu) / wall)


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for the load.

    A raw asyncio stream instead of an HTTP client library: httpx costs ~1 ms of this process's
    CPU per request, which on 2 cores is taken from the server under test and shows up in its
    latency. Here a request is one pre-built byte string and an answer is a status line,
    headers and a Content-Length (or chunked) body."""

    def __init__(self, host: str, port: int, request: bytes) -> None:
        self.host, self.port, self.request = host, port, request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self.reader is not None
        try:
            self.writer.write(self.request)
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            if "content-length" in headers:
                await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                    await self.reader.readexactly(size + 2)
                await self.reader.readuntil(b"\r\n")
            if headers.get("connection") == "close":
                await self.close()
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            await self.close()
            raise

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def http_request(url: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port or 80
    lines = [f"POST {parsed.raw_path.decode()} HTTP/1.1", f"Host: {host}:{port}",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def drive(url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float,
                warmup: float, variant: str) -> Result:
    host, port, request = http_request(url, body, headers)
    conns = [Connection(host, port, request) for _ in range(clients)]
    latencies: list[float] = []
    errors = 0

    async def worker(conn: Connection, until: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < until:
            t = time.perf_counter()
            try:
                ok = await conn.post() == 200
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                ok = False
            if record:
                if ok:
                    latencies.append(time.perf_counter() - t)
                else:
                    errors += 1

    await asyncio.gather(*(worker(c, time.perf_counter() + warmup, False) for c in conns))
    started = time.perf_counter()
    await asyncio.gather(*(worker(c, started + seconds, True) for c in conns))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in conns))
    return Result(variant, clients, len(latencies), errors, elapsed, latencies)


def merge(parts: list[Result]) -> Result:
    """One variant's windows of a level as one result: requests over the summed time."""
    seconds = sum(p.seconds for p in parts)
    cores = [(p.server_cores, p.seconds) for p in parts if p.server_cores is not None]
    return Result(parts[0].variant, parts[0].clients, sum(p.requests for p in parts),
                  sum(p.errors for p in parts), seconds,
                  [t for p in parts for t in p.latencies],
                  sum(c * s for c, s in cores) / seconds if len(cores) == len(parts) else None)


def group_cpu_seconds(pgid: int) -> float:
    """CPU time (user + system) of every live process in the process group ``pgid``."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the command: state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured(proc: Any, run: Any) -> Result:
    """Run the load ``run`` (a coroutine) and note the CPU the server's process group used."""
    before, started = group_cpu_seconds(proc.pid), time.perf_counter()
    result: Result = asyncio.run(run)
    result.server_cores = (group_cpu_seconds(proc.pid) - before) / (
        time.perf_counter() - started)
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], env: dict[str, str], ping: str, timeout: float = 120) -> Any:
    fd, log = tempfile.mkstemp(prefix="serve-bench-", suffix=".log")
    # Own process group: mlflow starts helpers that would outlive a plain kill.
    proc = subprocess.Popen(cmd, env=env, stdout=fd, stderr=subprocess.STDOUT,
                            start_new_session=True)
    os.close(fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited with {proc.returncode}; see {log}")
        try:
            if httpx.get(ping, timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise SystemExit(f"{' '.join(cmd)} not ready after {timeout:.0f} s; see {log}")


def stop(proc: Any) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def check(answer: np.ndarray, expected: np.ndarray, variant: str) -> None:
    if not np.allclose(answer, expected, atol=1e-5):
        raise SystemExit(f"{variant} answered {answer}, the model says {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, help="an existing project with a champion")
    parser.add_argument("--size", type=int, default=64, help="image side of the made model")
    parser.add_argument("--seconds", type=float, default=10.0, help="per concurrency level")
    parser.add_argument("--warmup", type=float, default=2.0, help="per level, split in rounds")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating windows per level (the machine's speed drifts)")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads in all three (OMP_NUM_THREADS for the "
                        "servers): the same for each, and 1 keeps OpenMP from spinning when "
                        "the cores are shared")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

    from pydicom.data import get_testdata_file

    from medops.project import Project
    from medops.registry import CHAMPION

    tmp = None
    if args.project:
        project = Project.load(args.project)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
        project = make_project(tmp / "proj", args.size)
    name = project.config.model_name
    champion = project.registry.by_alias(CHAMPION)
    if champion is None:
        raise SystemExit(f"{name} has no champion; approve a version first")
    loaded = project.registry.load(champion.version)
    blob = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    expected = loaded.predict_images([blob])[0]
    print(f"model {name} v{champion.version}: {loaded.model.spec.architecture}, profile "
          f"{loaded.profile.size} x{loaded.profile.channels}; load {os.getloadavg()}",
          flush=True)

    import torch

    torch.set_num_threads(args.threads)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    servers: list[tuple[str, Any, str, bytes, dict[str, str]]] = []
    try:
        port = free_port()
        medops = start([str(VENV_BIN / "medops"), "serve", "-C", str(project.root), "--port",
                        str(port)], env, f"http://127.0.0.1:{port}/ping")
        url = f"http://127.0.0.1:{port}/v1/models/{name}/predict"
        headers = {"content-type": "application/dicom"}
        answer = httpx.post(url, content=blob, headers=headers).json()["predictions"][0]
        check(np.array([answer["probabilities"][c] for c in loaded.classes]), expected,
              "medops serve")
        servers.append(("medops serve", medops, url, blob, headers))

        port = free_port()
        mlflow = start([str(VENV_BIN / "mlflow"), "models", "serve", "-m",
                        f"models:/{name}@{CHAMPION}", "--env-manager", "local", "-h",
                        "127.0.0.1", "-p", str(port)],
                       {**env, "MLFLOW_TRACKING_URI": project.tracker.tracking_uri},
                       f"http://127.0.0.1:{port}/ping", timeout=180)
        url = f"http://127.0.0.1:{port}/invocations"
        payload = json.dumps({"dataframe_split": {
            "columns": ["image"], "data": [[base64.b64encode(blob).decode()]]}}).encode()
        headers = {"content-type": "application/json"}
        answer = httpx.post(url, content=payload, headers=headers).json()["predictions"][0]
        check(np.array([answer[f"p_{c}"] for c in loaded.classes]), expected, "mlflow serve")
        servers.append(("mlflow models serve", mlflow, url, payload, headers))

        # This machine's speed drifts by 10-20 % from one minute to the next (other VMs):
        # each level is measured in rounds that alternate the variants, and pooled.
        window, warmup = args.seconds / args.rounds, max(0.5, args.warmup / args.rounds)
        results = []
        for c in args.levels:
            parts: dict[str, list[Result]] = {}
            for r in range(args.rounds):
                if c == 1:
                    parts.setdefault("bare", []).append(bare_loop(loaded, blob, window))
                for variant, proc, url, body, headers in servers[:: 1 if r % 2 else -1]:
                    parts.setdefault(variant, []).append(measured(proc, drive(
                        url, body, headers, c, window, warmup, variant)))
            for pooled in map(merge, parts.values()):
                results.append(pooled)
                print(_row(pooled), flush=True)
    finally:
        for _, proc, *_rest in servers:
            stop(proc)

    print(f"\nload average after: {os.getloadavg()}\n")
    print(table(results, args.levels))
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "latencies": None, "rps": r.rps,
                                          "p50_ms": r.pct(50), "p99_ms": r.pct(99)}
                                         for r in results], indent=2))
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)


def _row(r: Result) -> str:
    cores = "-" if r.server_cores is None else f"{r.server_cores:.2f}"
    per_cpu = "-" if not r.server_cores else f"{r.rps / r.server_cores:.1f}"
    return (f"| {r.variant} | {r.clients} | {r.rps:.1f} | {r.pct(50):.2f} | {r.pct(99):.2f} "
            f"| {r.errors} | {cores} | {per_cpu} |")


def table(results: list[Result], levels: list[int]) -> str:
    lines = ["| variant | clients | requests/s | p50 ms | p99 ms | errors | cores used "
             "| requests per CPU-second |",
             "|---|---|---|---|---|---|---|---|", *(_row(r) for r in results)]
    by = {(r.variant, r.clients): r for r in results}
    top = max(levels)
    med, mlf = by.get(("medops serve", top)), by.get(("mlflow models serve", top))
    if med and mlf:
        lines.append(f"\nthroughput medops / mlflow at {top} clients: "
                     f"**{med.rps / mlf.rps:.1f}x** (goal >= 3x)")
        if med.server_cores and mlf.server_cores:
            lines.append(f"per CPU-second of the server: "
                         f"{(med.rps / med.server_cores) / (mlf.rps / mlf.server_cores):.1f}x")
    one, bare = by.get(("medops serve", 1)), by.get(("bare forward loop", 1))
    if one and bare:
        lines.append(f"p50 overhead of medops serve over the bare forward at 1 client: "
                     f"**{one.pct(50) - bare.pct(50):.2f} ms** (goal <= 5 ms; bare p50 "
                     f"{bare.pct(50):.2f} ms)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
