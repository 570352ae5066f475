"""Debian's nginx as a plain process for tests: ``nginx -c CONF -g 'daemon off;'``.

The configuration must keep every file nginx writes (pid, logs, the ``*_temp_path`` folders)
in a folder of the test's: ``medops server init`` renders such a configuration when asked for
one (``StackOptions.nginx_runtime``). nginx runs in its own process group, which ``stop()``
ends; its workers run as ``nobody`` when started as root, so what they read must be
world-readable (the master reads the TLS key before dropping privileges).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SEARCH = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in SEARCH if Path(p).is_file()), None)


@dataclass
class NginxProcess:
    process: subprocess.Popen[bytes]
    config: Path
    log: Path

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGQUIT)  # graceful: finish open requests
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_nginx(config: Path, ports: tuple[int, ...], timeout: float = 15.0) -> NginxProcess:
    """Check ``config`` with ``nginx -t``, start it, and wait until ``ports`` accept."""
    exe = nginx_binary()
    if exe is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    check = subprocess.run([exe, "-t", "-q", "-e", "stderr", "-c", str(config)],
                           capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t refused {config}: {check.stderr}")
    log = config.with_name("nginx-stderr.log")
    with log.open("wb") as out:
        process = subprocess.Popen([exe, "-e", "stderr", "-c", str(config), "-g", "daemon off;"],
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = NginxProcess(process, config, log)
    deadline = time.monotonic() + timeout
    while not all(_listening(p) for p in ports):
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"nginx did not listen on {ports}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return server


@contextmanager
def running_nginx(config: Path, ports: tuple[int, ...]) -> Iterator[NginxProcess]:
    if nginx_binary() is None:
        reason = "nginx is not installed (apt-get install nginx-light)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; scripts/services installs it in CI")
        pytest.skip(reason)
    server = start_nginx(config, ports)
    try:
        yield server
    finally:
        server.stop()
