"""What a Spark executor's task runs, and how its rows come back to the driver.

A map's DataFrame has one row per item: its position and the pickled item. The items of the
map steps are task descriptions (a path or URI, a frame number, a content hash: tens of bytes),
never pixel data; the mapped function opens the file itself, in the task, and writes what it
produces (a cache entry, a shard) where the local executor writes it. ``mapInPandas`` runs
:class:`PartitionTask` over each partition and returns one row per item: the position and the
pickled result, or, for the first item whose function raised, the exception.

The exception is caught here rather than left to fail the task: Spark would retry a task that
fails the same way every time, and the driver could not raise it again with its own type.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from medops.errors import PipelineError
from medops.executor.threads import limit_spark_task_threads

if TYPE_CHECKING:  # pandas loads in the Spark worker (mapInPandas needs it), not on import
    import pandas as pd

T = TypeVar("T")
R = TypeVar("R")

ITEM_SCHEMA = "pos long, item binary"
RESULT_SCHEMA = "pos long, value binary, error string, exception binary"


class TaskFailedError(PipelineError):
    """The mapped function raised in a Spark task an exception that could not travel back
    (it does not pickle or unpickle); the message holds its type, text and traceback."""


@dataclass(frozen=True)
class PartitionTask(Generic[T, R]):
    """``fn`` over the items of one partition, as ``mapInPandas`` calls it: the input batches
    hold ``pos`` and ``item`` (pickled), the output rows ``pos`` and ``value`` (pickled), or
    ``error`` and ``exception`` for the item that raised, after which the partition's
    remaining items are skipped."""

    fn: Callable[[T], R]

    def __call__(self, batches: Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        limit_spark_task_threads()
        failed = False
        for batch in batches:
            if failed:  # drain the input: the runner expects every batch read
                continue
            positions: list[int] = []
            values: list[bytes] = []
            for pos, blob in zip(batch["pos"], batch["item"], strict=True):
                item = pickle.loads(blob)
                try:
                    value = self.fn(item)
                except Exception as exc:
                    failed = True
                    if positions:
                        yield _frame(positions, values)
                    yield _error_frame(int(pos), item, exc)
                    break
                positions.append(int(pos))
                values.append(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            else:
                if positions:
                    yield _frame(positions, values)


def _frame(positions: list[int], values: list[bytes]) -> pd.DataFrame:
    import pandas as pd

    n = len(positions)
    return pd.DataFrame({"pos": positions, "value": values, "error": [None] * n,
                         "exception": [None] * n})


def _error_frame(pos: int, item: object, exc: Exception) -> pd.DataFrame:
    import pandas as pd

    text = f"on item {item!r}:\n" + "".join(traceback.format_exception(exc))
    try:
        blob: bytes | None = pickle.dumps(exc)
    except Exception:  # an exception holding unpicklable state: its text travels alone
        blob = None
    return pd.DataFrame({"pos": [pos], "value": [None], "error": [text], "exception": [blob]})


def rows_of(rows: Iterable[Any]) -> Iterable[Any]:
    """The partition function of the driver's per-partition job: the rows as they are."""
    return rows


class _TaskTracebackError(Exception):
    """The task's traceback, chained as the cause of the exception raised again in the
    driver (as concurrent.futures does for a process pool)."""

    def __str__(self) -> str:
        return str(self.args[0])


def rebuild(blob: bytes | None, text: str,
            unrestorable: Callable[[str], BaseException] | None = None) -> BaseException:
    """The exception a task sent back, with its traceback as the cause; when the exception
    itself cannot be restored, ``unrestorable(text)`` (default: a :class:`TaskFailedError`
    carrying the text)."""
    exc: BaseException | None = None
    if blob is not None:
        try:
            exc = pickle.loads(blob)
        except Exception:  # an exception class that does not unpickle in the driver
            exc = None
    if exc is None:
        if unrestorable is not None:
            return unrestorable(text)
        return TaskFailedError(f"the mapped function raised in a Spark task {text}")
    exc.__cause__ = _TaskTracebackError(f"raised in a Spark task {text}")
    return exc
