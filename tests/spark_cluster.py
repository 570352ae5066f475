"""A real standalone Spark cluster for tests: one master and one worker on 127.0.0.1.

Started from the pip package's ``spark-class`` (it has no ``start-master.sh``), on free ports,
each JVM in its own process group, which teardown stops (worker first, then master). A worker
counts as started once the master's JSON UI lists it ALIVE: that is what the master schedules
executors on, whatever the worker's log says.

Use the session fixture ``spark_master`` from tests/conftest.py; it yields the master URL and
starts the cluster once per test session (about 10-15 s)::

    from tests.spark_cluster import DRIVER_CONF

    def test_on_the_cluster(spark_master: str) -> None:
        with SparkExecutor(spark_master, DRIVER_CONF) as executor:
            ...

``DRIVER_CONF`` sizes the application to the worker (2 cores, 512 MB executor). A process has
one Spark context at a time: close every executor of a test before the next test uses another
master. The worker runs the tasks with this interpreter from its own work folder, with the
repository root on ``PYTHONPATH``, so functions of test modules can be mapped (on a real
cluster, mapped code must be installed on every node).

A test that kills the worker takes the ``spark_cluster`` fixture and calls
``cluster.kill_worker()``, then ``cluster.start_worker()`` before it ends so that later tests
find a worker; a test that kills the master starts a private cluster with
``with running_cluster(tmp_path) as cluster:``. Where pyspark or Java is missing the fixture
skips with the reason, except under CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.servers.processes import stop_group

REPO = Path(__file__).resolve().parents[1]
WORKER_CORES = 2
DRIVER_CONF = {"spark.cores.max": str(WORKER_CORES), "spark.executor.memory": "512m"}
_MASTER_READY = "I have been elected leader"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_reason() -> str | None:
    """Why no cluster can start here, or None."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install 'medops[spark]')"
    if not os.environ.get("JAVA_HOME") and shutil.which("java") is None:
        return "no Java runtime (apt-get install openjdk-17-jre-headless)"
    return None


def _spark_class() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "bin" / "spark-class"


@dataclass
class SparkCluster:
    url: str  # spark://127.0.0.1:PORT
    ui: str  # the master's web UI: http://127.0.0.1:PORT
    workdir: Path
    env: dict[str, str]
    master: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None = None
    _worker_starts: int = field(default=0)

    def state(self) -> dict[str, Any]:
        """The master's view of the cluster (its ``/json/`` page): workers, applications."""
        with urllib.request.urlopen(f"{self.ui}/json/", timeout=5) as answer:
            return dict(json.load(answer))

    def start_worker(self, timeout: float = 60.0) -> None:
        """Start a worker (2 cores, 1 GB) and wait until the master lists it ALIVE."""
        self._worker_starts += 1
        name = f"worker{self._worker_starts}"
        port = free_port()
        log = self.workdir / f"{name}.log"
        self.worker = _launch(
            log, self.env, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
            "--port", str(port), "--webui-port", str(free_port()), "--cores",
            str(WORKER_CORES), "--memory", "1g", "--work-dir", str(self.workdir / name),
            self.url)

        def registered() -> bool:
            return any(w.get("port") == port and w.get("state") == "ALIVE"
                       for w in self.state().get("workers", ()))

        _wait_until(self.worker, log, registered, f"registered as ALIVE on {self.ui}/json/",
                    timeout)

    def kill_worker(self) -> None:
        """SIGKILL the worker's process group (its executors and Python workers die too)."""
        if self.worker is not None:
            _stop(self.worker, signal.SIGKILL)
            self.worker = None

    def stop(self) -> None:
        if self.worker is not None:
            _stop(self.worker, signal.SIGTERM)
            self.worker = None
        _stop(self.master, signal.SIGTERM)


def _launch(log: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(_spark_class()), *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until(process: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool],
                what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except OSError:  # the UI is not listening yet
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} exited with {process.returncode}: "
                               f"{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.2)
    _stop(process, signal.SIGTERM)
    raise RuntimeError(f"{log.stem} not {what} within {timeout} s: "
                       f"{log.read_text(errors='replace')[-2000:]}")


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the process group (the JVM and anything it started), then KILL if needed."""
    stop_group(process, sig)
    with contextlib.suppress(ProcessLookupError):  # children left after the JVM exited
        os.killpg(process.pid, signal.SIGKILL)


def start_cluster(workdir: Path, timeout: float = 60.0) -> SparkCluster:
    """A master on free ports under ``workdir`` (logs, work folders), and one worker."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYTHONPATH": path,
           "SPARK_LOG_DIR": str(workdir / "logs"), "SPARK_WORKER_DIR": str(workdir / "work"),
           "SPARK_DAEMON_MEMORY": "256m"}
    port, ui_port = free_port(), free_port()
    log = workdir / "master.log"
    master = _launch(log, env, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                     "--port", str(port), "--webui-port", str(ui_port))
    cluster = SparkCluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}", workdir,
                           env, master)

    def elected() -> bool:
        return _MASTER_READY in log.read_text(errors="replace") and \
            cluster.state().get("status") == "ALIVE"

    try:
        _wait_until(master, log, elected, "elected leader", timeout)
        cluster.start_worker(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextmanager
def running_cluster(workdir: Path) -> Iterator[SparkCluster]:
    reason = missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; the dev extra and a JDK are required in CI")
        pytest.skip(reason)
    cluster = start_cluster(workdir)
    try:
        yield cluster
    finally:
        cluster.stop()
