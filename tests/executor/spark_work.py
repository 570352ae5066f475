"""Functions the Spark tests map. A module of its own, importing nothing heavy, because each
Spark Python worker imports the module of the function it runs: a test module would bring the
whole pipeline (seconds of imports per worker) into every one of them."""

from __future__ import annotations

import os
import sys
import threading
import time


def square(x: int) -> int:
    return x * x


def slow_square(x: int) -> int:
    time.sleep(0.3)
    return x * x


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x


class UnpicklableError(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable(x: int) -> int:
    raise UnpicklableError()


def crash_on_five(x: int) -> int:
    if x == 5:
        os._exit(3)  # a native decoder's segfault, as the worker's parent sees it
    return x


def nap(x: float) -> int:
    time.sleep(x)
    return os.getpid()


def worker_setup(_: int) -> tuple[str, str | None]:
    return sys.executable, os.environ.get("SPARK_LOCAL_IP")
