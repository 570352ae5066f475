"""When a received series is complete, and handing it to the ingester.

DICOM has no "end of series" message: a series is complete once ``quiet_seconds`` pass with no
new instance of it. Completion is decided from the index, not from memory alone, so a series that
was received but not ingested before a crash is ingested after the restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from medops.data.scp.store import InstanceStore
from medops.storage.received import ReceivedIndex, ReceivedInstance, ReceivedStatus

log = logging.getLogger(__name__)

#: The ingester as the receiver sees it: (files as (name, bytes), label) -> anything.
IngestFn = Callable[[Iterable[tuple[str, bytes]], "str | None"], Any]


class SeriesTracker:
    """Series with instances not yet ingested, and when each last received one."""

    def __init__(self, quiet_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet_seconds = quiet_seconds
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, series_hash: str) -> None:
        with self._lock:
            self._last[series_hash] = self._clock()

    def take_due(self) -> list[str]:
        """Series quiet for ``quiet_seconds``, removed from the tracker (oldest first)."""
        now = self._clock()
        with self._lock:
            due = sorted((t, s) for s, t in self._last.items() if now - t >= self.quiet_seconds)
            for _, series in due:
                del self._last[series]
        return [s for _, s in due]

    def take_all(self) -> list[str]:
        with self._lock:
            pending = sorted(self._last, key=self._last.__getitem__)
            self._last.clear()
        return pending

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)


@dataclass(frozen=True)
class SeriesResult:
    series_hash: str
    ingested: int
    missing: int
    result: Any = None  # what the ingester returned


class SeriesIngester:
    """Hands one completed series' pending instances to the ingester, then marks them."""

    def __init__(self, source: str, store: InstanceStore, index: ReceivedIndex,
                 ingest: IngestFn) -> None:
        self.source = source
        self.store = store
        self.index = index
        self._ingest = ingest  # it stores the items and records the data.arrived event

    def ingest(self, series_hash: str) -> SeriesResult | None:
        """Ingest what is pending of ``series_hash``; None when nothing is."""
        pending = self.index.pending(self.source, series_hash)
        if not pending:
            return None
        present = [i for i in pending if self.store.path(i.path).is_file()]
        missing = [i for i in pending if i not in present]
        if missing:
            log.warning("series %s: %d indexed instance(s) are no longer on disk",
                        series_hash[:12], len(missing))
            self.index.mark(self.source, (i.sop_hash for i in missing), ReceivedStatus.MISSING)
        results = []
        by_label: dict[str | None, list[ReceivedInstance]] = {}
        for inst in present:
            by_label.setdefault(inst.label, []).append(inst)
        for label, group in by_label.items():
            results.append(self._ingest(self._files(group), label))
        # Marked only after the ingester returned: a crash in between ingests the series
        # again on restart, which the ingester's content hashes make harmless.
        self.index.mark(self.source, (i.sop_hash for i in present), ReceivedStatus.INGESTED)
        log.info("series %s complete: %d instance(s) ingested", series_hash[:12], len(present))
        return SeriesResult(series_hash, len(present), len(missing),
                            results[0] if len(results) == 1 else results)

    def _files(self, instances: list[ReceivedInstance]) -> Iterator[tuple[str, bytes]]:
        # lazily, so a series of a thousand slices is never in memory at once
        for inst in instances:
            yield f"{inst.sop_hash}.dcm", self.store.path(inst.path).read_bytes()
