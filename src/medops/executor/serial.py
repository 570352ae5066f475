"""The serial executor: everything in this process, for debugging and tiny jobs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from medops.executor.base import Executor

T = TypeVar("T")
R = TypeVar("R")


class SerialExecutor(Executor):
    """Runs each item in turn in the calling process; breakpoints and tracebacks just work."""

    workers = 1

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, chunksize: int | None = None
    ) -> Iterator[R]:
        return (fn(item) for item in items)

    def close(self) -> None:
        """Nothing to release."""
