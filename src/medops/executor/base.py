"""The executor interface: map a function over items, results in order, somewhere.

Like httpx's one-method transport, an executor does one thing (``map``); where the work runs
(this process, a local process pool, a Spark cluster) is the backend's business. Functions and
items must be picklable for any backend but the serial one: use module-level functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")
E = TypeVar("E", bound="Executor")


class Executor(Protocol):
    """Runs ``fn`` over ``items`` and yields the results in the order of ``items``.

    ``chunksize`` is how many items travel to a worker at once (None: the backend decides).
    An exception raised by ``fn`` propagates out of the iterator; catch it inside ``fn`` to
    report per-item failures instead. Use as a context manager, or call :meth:`close`.
    """

    def map(
        self, fn: Callable[[T], R], items: Sequence[T], *, chunksize: int | None = None
    ) -> Iterator[R]: ...

    def close(self) -> None:
        """Release the workers; the executor may not be used afterwards."""
        ...

    def __enter__(self: E) -> E:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
