"""A background writer for the capture store, so a request never waits on disk.

``submit`` only appends to an in-memory buffer; a daemon thread writes the buffer as one
Parquet file per day every ``flush_seconds`` (or sooner when ``max_pending`` rows wait), and
``close`` writes whatever is left. A failed write keeps the rows for the next attempt; only
beyond ``max_buffer`` rows (a disk that stays broken) are the oldest dropped, and counted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from medops.monitor.capture import CaptureRecord, CaptureStore, Feedback

log = logging.getLogger(__name__)


class CaptureWriter:
    def __init__(self, store: CaptureStore, flush_seconds: float = 1.0, max_pending: int = 1024,
                 max_buffer: int = 200_000) -> None:
        self.store = store
        self.flush_seconds = flush_seconds
        self.max_pending = max_pending
        self.max_buffer = max_buffer
        self.dropped = 0
        self.written = 0
        self._records: list[CaptureRecord] = []
        self._feedback: list[Feedback] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="medops-capture", daemon=True)
        self._thread.start()

    def submit(self, records: Sequence[CaptureRecord]) -> None:
        with self._lock:
            self._records.extend(records)
            pending = len(self._records)
        if pending >= self.max_pending:
            self._wake.set()

    def submit_feedback(self, items: Sequence[Feedback]) -> None:
        with self._lock:
            self._feedback.extend(items)
        self._wake.set()  # feedback is rare and small: store it promptly

    def flush(self) -> None:
        """Write everything buffered now, in the caller's thread."""
        with self._lock:
            records, self._records = self._records, []
            feedback, self._feedback = self._feedback, []
        self._write(records, feedback)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and write what is left."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if not self._stop.is_set():
                self.flush()

    def _write(self, records: list[CaptureRecord], feedback: list[Feedback]) -> None:
        try:
            if records:
                self.written += self.store.append(records)
                records = []
            if feedback:
                self.store.add_feedback(feedback)
                feedback = []
        except Exception as exc:  # keep serving; the rows wait for the next attempt
            log.error("capture write failed, %d rows kept for retry: %s",
                      len(records) + len(feedback), exc)
            with self._lock:
                self._records[:0] = records
                self._feedback[:0] = feedback
                excess = len(self._records) - self.max_buffer
                if excess > 0:
                    del self._records[:excess]
                    self.dropped += excess
