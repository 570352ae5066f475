"""Starting the Spark session: checks that fail fast and clearly, then medops' defaults.

Spark's own failures here are slow or cryptic: a master that does not answer is retried for a
minute, a missing ``java`` is a ``FileNotFoundError`` from deep in the gateway launcher, and a
worker on another interpreter fails on the first task. These checks come first.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from medops.errors import ConfigError, DependencyMissingError, MedopsError, UnavailableError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

LOCAL_MASTERS = ("local", "local-cluster")
_MASTER_FORMS = "local, local[N], local[*], spark://HOST:PORT, yarn or k8s://https://HOST:PORT"
_PROBE_TIMEOUT_S = 3.0
# local, local[4], local[*], local[4,2] (2 task attempts), local-cluster[workers,cores,MB]
_LOCAL_FORM = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]")
_JDK_FIX = ("install a JDK 17 (e.g. `apt-get install openjdk-17-jre-headless`) and put "
            "its `java` on PATH or set JAVA_HOME to it")


class JavaMissingError(DependencyMissingError):
    """Spark needs a Java runtime, which pip cannot install: none is found, or the one found
    cannot start Spark's JVM."""

    def __init__(self, problem: str) -> None:
        # Not DependencyMissingError's message: the fix is no pip install.
        MedopsError.__init__(self, f"{problem}; fix: {_JDK_FIX}")
        self.package = "java"
        self.extra = None


def check_master(master: str) -> str:
    """``master`` if it has a form Spark's classic API accepts; ConfigError otherwise."""
    value = master.strip()
    if value.startswith("sc://"):
        raise ConfigError(f"executor.master {master!r} is a Spark Connect URL; medops needs a "
                          f"classic Spark driver: use one of {_MASTER_FORMS}")
    if value == "yarn" or _LOCAL_FORM.fullmatch(value):
        return value
    if value.startswith(("spark://", "k8s://")):
        try:
            _endpoints(value)
        except ValueError as exc:
            raise ConfigError(f"executor.master {master!r}: {exc}; expected {_MASTER_FORMS}") \
                from None
        return value
    raise ConfigError(f"unknown executor.master {master!r}; expected {_MASTER_FORMS}")


def _endpoints(master: str) -> list[tuple[str, int]]:
    if master.startswith("k8s://"):
        rest = master.removeprefix("k8s://")
        url = urlsplit(rest if "://" in rest else f"https://{rest}")  # Spark's default scheme
        if not url.hostname:
            raise ValueError("no API server host")
        return [(url.hostname, url.port or (80 if url.scheme == "http" else 443))]
    out = []
    for part in master.removeprefix("spark://").split(","):
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{part!r} is not HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    return out


def _probe(master: str) -> None:
    """Fail fast when no master answers: Spark itself retries for a minute before giving up."""
    if master == "yarn" and not (os.environ.get("HADOOP_CONF_DIR")
                                 or os.environ.get("YARN_CONF_DIR")):
        raise ConfigError("executor.master 'yarn' needs HADOOP_CONF_DIR or YARN_CONF_DIR set to "
                          "the folder holding the cluster's yarn-site.xml (on EMR: "
                          "/etc/hadoop/conf)")
    if not master.startswith(("spark://", "k8s://")):
        return
    errors = []
    for host, port in _endpoints(master):
        try:
            with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
                return
        except OSError as exc:
            errors.append(f"{host}:{port}: {exc.strerror or exc}")
    raise UnavailableError(f"the Spark master {master} does not answer ({'; '.join(errors)}); "
                           "check that it runs and that executor.master names its host and port")


def _check_java() -> str:
    """The ``java`` Spark's launcher will run (it prefers JAVA_HOME's)."""
    home = os.environ.get("JAVA_HOME")
    if home:
        java = Path(home) / "bin" / "java"
        if not java.is_file():
            raise JavaMissingError(f"Spark runs JAVA_HOME's java, and JAVA_HOME={home} has no "
                                   "bin/java; point JAVA_HOME at a JDK, or unset it to use the "
                                   "`java` on PATH")
        return str(java)
    found = shutil.which("java")
    if found is None:
        raise JavaMissingError("Spark needs Java, and there is no `java` on PATH and no "
                               "JAVA_HOME")
    return found


def _is_loopback(master: str) -> bool:
    if master.startswith(LOCAL_MASTERS):
        return True
    if not master.startswith("spark://"):
        return False
    return all(h in ("localhost", "::1") or h.startswith("127.") for h, _ in _endpoints(master))


def start_session(master: str, conf: Mapping[str, str], parallelism: int | None,
                   app_name: str) -> tuple[SparkSession, bool]:
    """The session for ``master`` and whether this call started it."""
    try:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession
    except ImportError:
        raise DependencyMissingError("pyspark", "spark", "executor.kind spark") from None
    java = _check_java()
    _probe(master)
    settings = _settings(master, conf, parallelism)
    active = SparkContext._active_spark_context
    if active is not None:
        if active.master != master:
            raise ConfigError(f"a Spark context for master {active.master!r} already runs in "
                              f"this process; stop it or set executor.master to it (not "
                              f"{master!r})")
        differ = sorted(k for k, v in settings.items() if active.getConf().get(k) != v)
        if differ:
            log.warning("reusing the running Spark context on %s, whose settings differ for "
                        "%s: they apply only to a context this executor starts", master,
                        ", ".join(differ))
        return SparkSession.builder.getOrCreate(), False
    # Workers run the driver's interpreter, so the mapped code and its libraries are the same.
    os.environ["PYSPARK_PYTHON"] = conf.get("spark.pyspark.python") \
        or os.environ.get("PYSPARK_PYTHON") or sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if _is_loopback(master) and not os.environ.get("SPARK_LOCAL_IP"):
        # Read by the JVM when it starts; only for a driver whose cluster is this machine.
        os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in settings.items():
        builder = builder.config(key, value)
    started = time.monotonic()
    try:
        session = builder.getOrCreate()
    except Exception as exc:
        if "JAVA_GATEWAY_EXITED" not in str(exc) and "gateway process exited" not in str(exc):
            raise
        import pyspark

        needs = "17 or 21" if int(pyspark.__version__.split(".")[0]) >= 4 else "8, 11 or 17"
        raise JavaMissingError(
            f"Spark's JVM did not start with {java} (its own error is printed above; pyspark "
            f"{pyspark.__version__} needs Java {needs}, and memory for the driver)") from exc
    log.info("spark session on %s ready in %.1f s (default parallelism %d)", master,
             time.monotonic() - started, session.sparkContext.defaultParallelism)
    return session, True


def _settings(master: str, conf: Mapping[str, str], parallelism: int | None) -> dict[str, str]:
    """medops' defaults, then ``conf`` over them."""
    settings: dict[str, str] = {}
    if _is_loopback(master) and not os.environ.get("SPARK_LOCAL_IP"):
        # A cluster on this machine reaches the driver on loopback; a real cluster must reach
        # it by its name, which Spark finds by itself.
        settings |= {"spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"}
    # The console progress bar would fight medops' own progress display.
    settings |= {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
                 "spark.sql.execution.arrow.pyspark.enabled": "true"}
    if parallelism is not None:
        settings["spark.default.parallelism"] = str(parallelism)
    return settings | dict(conf)
