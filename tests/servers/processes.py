"""Stopping the real processes tests start in their own process group (servers, agents)."""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any


def stop_group(proc: subprocess.Popen[Any], sig: signal.Signals = signal.SIGTERM,
               timeout: float = 15.0) -> None:
    """``sig`` to ``proc``'s process group, SIGKILL after ``timeout`` s; idempotent."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
