"""Stopping a run on SIGINT or SIGTERM so that it resumes, never retries.

The signal raises ``KeyboardInterrupt`` in whatever the step is doing, but libraries do not all
let it through: numpy's ``np.load`` turns one into a ``TypeError``, and a first MLflow database
set-up can swallow it. So the signal also sets a flag the runner reads: a step that fails after
it is interrupted (not retried), no step starts after it, and training stops at the next epoch.

Only the first signal raises: Ctrl-C reaches a whole process group, and the agent relays it to
its run too; a second raise at once would break the cleanup of the first. Where a person is at
the keyboard (``force_after``), a signal that comes that long after the first raises again: a
stop that a long step swallowed can still be forced, and the run is found interrupted later.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class Interrupt:
    """A stop request: set by a signal handler, read by the runner and long steps."""

    def __init__(self, force_after: float | None = None) -> None:
        self._event = threading.Event()
        self._force_after = force_after
        self._first: float | None = None

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a stop was requested."""
        if self._event.is_set():
            raise KeyboardInterrupt

    def request(self) -> None:
        if self._first is None:
            self._first = time.monotonic()
        self._event.set()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._first is None:
            self.request()
            raise KeyboardInterrupt
        if self._force_after is not None and time.monotonic() - self._first >= self._force_after:
            raise KeyboardInterrupt

    def install(self, *signums: int) -> dict[int, Any]:
        """From now on ``signums`` (default SIGINT and SIGTERM) request a stop; returns the
        handlers they had. Signal handlers belong to the main thread: elsewhere, a no-op."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._handle)
                for s in signums or (signal.SIGINT, signal.SIGTERM)}

    @contextmanager
    def on_signals(self, *signums: int) -> Iterator[Interrupt]:
        """:meth:`install` for the duration of the block."""
        previous = self.install(*signums)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def caused_by_interrupt(exc: BaseException) -> bool:
    """True if ``exc`` was raised while handling a ``KeyboardInterrupt`` (a library wrapped it)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, KeyboardInterrupt):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False
