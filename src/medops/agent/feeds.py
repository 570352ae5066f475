"""Where trigger events come from inside the agent: the watched folder and polled sources.

Every feed stores its event in the state store first (with an idempotency key) and then wakes
the agent's loop; the loop only ever acts on stored events. Events written by other processes
(``medops receive``, ``medops agent request``, the monitor) reach the loop by its DB poll.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medops.config.schema import MedopsConfig
from medops.data.sources import FolderSource
from medops.errors import DependencyMissingError
from medops.storage import EventKind, Item, ItemStatus, StateStore

log = logging.getLogger(__name__)


def import_files(source: FolderSource, state: StateStore, items: list[Item]) -> bool:
    """Store ``items`` and, if any is new or changed, a ``data.arrived`` event keyed by their
    content. True when an event was stored."""
    if not items:
        return False
    new, changed = state.upsert_items(items)
    # Items the catalog still has pending (new ones, and any whose event a crash lost before
    # it was stored) are what the event announces; its key is their content.
    pending = sorted(i.key + "|" + i.uri for i in state.items(ItemStatus.PENDING)
                     if i.source == source.name)
    if not (new or changed or pending):
        return False
    digest = hashlib.sha256("\n".join(pending).encode()).hexdigest()[:24]
    payload = {"source": "folder", "new": new, "changed": changed, "pending": len(pending)}
    return state.add_event(EventKind.DATA_ARRIVED, payload, f"folder:{digest}") is not None


class FolderWatch:
    """Imports files landing under the folder source, once the folder has been quiet for
    ``quiet`` seconds (a copy of 500 files is one import and one event)."""

    def __init__(self, source: FolderSource, state: StateStore, quiet: float,
                 on_event: Callable[[], None], stop: threading.Event) -> None:
        self.source = source
        self.state = state
        self.quiet = quiet
        self.on_event = on_event
        self._stop = stop
        self._changed: set[Path] = set()
        self._last_change = 0.0
        self._cond = threading.Condition()
        self._observer: Any = None
        self._thread = threading.Thread(target=self._loop, name="folder-import", daemon=True)

    def start(self) -> None:
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ModuleNotFoundError as exc:
            raise DependencyMissingError("watchdog", "agent", "watching the data folder") from exc
        watch = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory or event.event_type in ("opened", "closed_no_write"):
                    return
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    if p:
                        watch.changed(Path(p if isinstance(p, str) else p.decode()))

        self._observer = Observer()
        self._observer.schedule(Handler(), str(self.source.root), recursive=True)
        self._observer.start()
        self._thread.start()
        # Files that landed while no agent was running: one catch-up import of the folder.
        self._import(list(self.source.list_items()))

    def changed(self, path: Path) -> None:
        with self._cond:
            self._changed.add(path)
            self._last_change = time.monotonic()
            self._cond.notify()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
        with self._cond:
            self._cond.notify()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                if not self._changed:
                    self._cond.wait(0.5)
                    continue
                remaining = self._last_change + self.quiet - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                paths, self._changed = self._changed, set()
            try:
                self._import(list(self.source.items_for_paths(p.resolve() for p in paths)))
            except Exception:  # a bad file must not stop the watch; it is retried next change
                log.exception("importing %d landed file(s) failed", len(paths))

    def _import(self, items: list[Item]) -> None:
        if import_files(self.source, self.state, items):
            log.info("data.arrived: %d file(s) imported from the watched folder", len(items))
            self.on_event()


def poll_sources(config: MedopsConfig, ws: Any, on_event: Callable[[], None]) -> None:
    """Poll each network source of ``data.sources`` once through the ingester, which stores
    the items, the cursor and the ``data.arrived`` events itself."""
    from medops.data.ingest import ingest_remote
    from medops.data.sources.factory import make_remote_source

    for name, cfg in config.data.sources.items():
        if cfg.kind == "dicom-scp":  # pushed to `medops receive`, which records its events
            continue
        try:
            report = ingest_remote(make_remote_source(name, cfg), ws.state, ws.landing_dir,
                                   ws.ingest_settings)
        except Exception as exc:  # an unreachable PACS must not stop the other sources
            log.warning("polling source %s failed: %s", name, type(exc).__name__)
            continue
        if report.rejected:
            log.warning("source %s: %d message(s) refused (reasons above; see its dead-letter "
                        "queue)", name, report.rejected)
        if report.events:
            log.info("source %s: %d event(s) stored, %d new item(s)", name, report.events,
                     report.new)
            on_event()
