"""The DICOM C-STORE receiver (Storage SCP) on pynetdicom.

Each C-STORE is answered only after the instance is durable: written and fsynced under a temporary
name, renamed, the folder fsynced, and indexed in the state database. Then, and only then, the
sender hears Success (0x0000); a sender that heard Success may delete its copy. Otherwise it hears
a failure and nothing is kept:

- 0xA700 (out of resources): free disk under ``min_free_mb``, a write error, the index unreachable;
- 0xC000 (cannot understand): a payload that does not decode, or lacks its study/series/SOP UIDs.

Associations from calling AE titles not in ``allowed_calling_aets`` are rejected (A-ASSOCIATE-RJ,
"calling AE title not recognised"). pynetdicom runs each association in its own thread, so
C-ECHO is answered while other associations store.

No UID, name or patient identifier is logged: only counts, AE titles and hashes.
"""

from __future__ import annotations

import errno
import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from medops.config.sources import DicomScpSourceConfig
from medops.data.scp.series import IngestFn, SeriesIngester, SeriesTracker
from medops.data.scp.store import InstanceKey, InstanceStore
from medops.errors import ConfigError, DependencyMissingError, MedopsError, StoreError
from medops.storage import StateStore
from medops.storage.received import ReceivedIndex, ReceivedInstance, ReceivedStatus

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
# Ingested files are checked against keep_received every keep_received / 2, at least this often.
_PURGE_EVERY = 60.0


@dataclass
class ReceiverStats:
    stored: int = 0
    duplicates: int = 0
    refused_full: int = 0
    refused_bad: int = 0
    failed: int = 0
    series_ingested: int = 0
    purged: int = 0  # received files deleted after ingestion (keep_received)
    recovered: int = 0  # files found on disk at startup that were not indexed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class Receiver:
    """A Storage SCP for the source ``name`` (``data.sources.<name>``, kind dicom-scp)."""

    def __init__(self, name: str, cfg: DicomScpSourceConfig, storage: Path, state: StateStore,
                 ingest: IngestFn) -> None:
        if not cfg.allowed_calling_aets:
            raise ConfigError(
                f"data.sources.{name}.allowed_calling_aets is empty, so every sender would be "
                "refused; list the AE titles allowed to store (e.g. [CT01, PACS]) or pass "
                "--allow AE to `medops receive`")
        self.name = name
        self.cfg = cfg
        self.store = InstanceStore(storage, cfg.min_free_mb)
        self.index = ReceivedIndex(state.db)
        self.state = state
        self.tracker = SeriesTracker(cfg.quiet_seconds)
        self.ingester = SeriesIngester(name, self.store, self.index, ingest)
        self.stats = ReceiverStats()
        self._server: Any = None
        self._ae: Any = None

    # -- startup --------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish what a crash left: drop temporary files, index stored files that were never
        indexed, and queue every series with instances not yet ingested."""
        removed = self.store.remove_temporaries()
        if removed:
            log.info("removed %d partial file(s) of unacknowledged instances", removed)
        self.store.remove_empty_folders()
        indexed = self.index.paths(self.name)
        for relpath in self.store.stored():
            if relpath not in indexed and self._index_found_file(relpath):
                self.stats.add("recovered")
        if self.stats.recovered:
            log.info("indexed %d stored instance(s) missing from the index", self.stats.recovered)
        pending = {i.series_hash for i in self.index.pending(self.name)}
        for series in pending:
            self.tracker.touch(series)
        if pending:
            log.info("%d series with instances not yet ingested", len(pending))

    def _index_found_file(self, relpath: str) -> bool:
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        path = self.store.path(relpath)
        try:
            ds = dcmread(path, stop_before_pixels=True)
            key = InstanceKey.from_uids(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                        str(ds.SOPInstanceUID))
        except (InvalidDicomError, AttributeError, OSError, ValueError, EOFError):
            log.warning("%s is not a readable DICOM instance; left in place", relpath)
            return False
        if key.relpath != relpath:
            log.warning("%s does not match its UIDs; left in place", relpath)
            return False
        return self.index.add(ReceivedInstance(
            source=self.name, sop_hash=key.sop_hash, series_hash=key.series_hash,
            study_hash=key.study_hash, path=relpath, size=path.stat().st_size,
            calling_ae=None, label=_label(ds, self.cfg.label_tag)))

    # -- the network side -----------------------------------------------------------------
    def start(self) -> None:
        """Listen (in background threads) on ``cfg.host:cfg.port``."""
        try:
            from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
            from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
        except ModuleNotFoundError as exc:
            raise DependencyMissingError("pynetdicom", "dicom-net",
                                         "the DICOM receiver") from exc
        try:
            ae = AE(ae_title=self.cfg.ae_title)
        except ValueError as exc:
            raise ConfigError(f"data.sources.{self.name}.ae_title {self.cfg.ae_title!r} is not a "
                              f"valid AE title ({exc}); use up to 16 characters") from exc
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax:
                ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = list(self.cfg.allowed_calling_aets)
        ae.require_called_aet = True
        ae.maximum_associations = 32
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, _on_echo),
                    (evt.EVT_REJECTED, self._on_rejected)]
        try:
            self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False,
                                           evt_handlers=handlers)
        except OSError as exc:
            fix = ("pick another port with --port" if exc.errno == errno.EADDRINUSE
                   else "check --host: an address of this machine, or 0.0.0.0")
            raise ConfigError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: "
                              f"{exc.strerror or exc}; {fix}") from exc
        self._ae = ae
        log.info("listening on %s:%d as %s for %s", self.cfg.host, self.cfg.port,
                 self.cfg.ae_title, ", ".join(self.cfg.allowed_calling_aets))

    def _on_rejected(self, event: Any) -> None:
        log.warning("association from %s refused", event.assoc.requestor.ae_title or "?")

    def _on_store(self, event: Any) -> int:
        try:
            ds = _decoded(event)
            key = InstanceKey.from_uids(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                        str(ds.SOPInstanceUID))
            label = _label(ds, self.cfg.label_tag)
        except Exception:  # whatever fails to decode is the sender's bad payload
            log.warning("C-STORE from %s refused: the dataset does not decode or lacks its "
                        "study/series/SOP instance UIDs", _calling(event))
            self.stats.add("refused_bad")
            return CANNOT_UNDERSTAND
        try:
            if self.index.contains(self.name, key.sop_hash):
                self.stats.add("duplicates")
                return SUCCESS
        except StoreError as exc:
            log.error("index unreachable (%s): C-STORE refused", type(exc.__cause__).__name__)
            self.stats.add("failed")
            return OUT_OF_RESOURCES
        data: bytes = event.encoded_dataset(include_meta=True)
        if not self.store.has_room_for(len(data)):
            log.warning("C-STORE refused: free disk under min_free_mb=%d", self.cfg.min_free_mb)
            self.stats.add("refused_full")
            return OUT_OF_RESOURCES
        try:
            relpath = self.store.write(key, data)
        except OSError as exc:
            log.error("cannot store instance %s: %s", key.sop_hash[:12], exc.strerror)
            self.stats.add("failed")
            return OUT_OF_RESOURCES
        try:
            new = self.index.add(ReceivedInstance(
                source=self.name, sop_hash=key.sop_hash, series_hash=key.series_hash,
                study_hash=key.study_hash, path=relpath, size=len(data),
                calling_ae=_calling(event), label=label))
        except StoreError as exc:
            log.error("cannot index instance %s (%s); file removed", key.sop_hash[:12],
                      type(exc.__cause__).__name__)
            self.store.remove(relpath)
            self.stats.add("failed")
            return OUT_OF_RESOURCES
        self.stats.add("stored" if new else "duplicates")
        self.tracker.touch(key.series_hash)
        return SUCCESS

    # -- series completion and shutdown ---------------------------------------------------
    def ingest_due(self, flush: bool = False) -> int:
        """Ingest every series quiet for ``quiet_seconds`` (all pending ones if ``flush``)."""
        done = 0
        for series in self.tracker.take_all() if flush else self.tracker.take_due():
            try:
                result = self.ingester.ingest(series)
            except (MedopsError, OSError) as exc:
                log.error("series %s not ingested (retried later): %s", series[:12], exc)
                self.tracker.touch(series)
                continue
            if result is not None:
                done += 1
                self.stats.add("series_ingested")
        return done

    def purge_due(self) -> int:
        """Delete the received files of instances ingested ``keep_received`` ago or more."""
        if self.cfg.keep_received is None:
            return 0
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.cfg.keep_received)
        purged = 0
        while batch := self.index.ingested_before(self.name, cutoff):
            done = []
            for inst in batch:
                try:
                    self.store.purge(inst.path)
                except OSError as exc:
                    log.warning("could not delete received file %s (kept, retried later): %s",
                                inst.path, exc.strerror)
                    continue
                done.append(inst.sop_hash)
            self.index.mark(self.name, done, ReceivedStatus.PURGED)
            purged += len(done)
            if len(done) < len(batch):
                break  # what failed stays ingested: the next purge tries it again
        if purged:
            self.stats.purged += purged
            log.info("deleted %d received file(s) ingested at least %s ago (keep_received)",
                     purged, _ago(self.cfg.keep_received))
        return purged

    def stop(self) -> None:
        """Stop listening (open associations are aborted), then ingest what is pending."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None
        self.ingest_due(flush=True)
        self.purge_due()
        log.info("receiver stopped: %s", self.stats.as_dict())

    def serve(self, stop: threading.Event) -> None:
        """Recover, listen, and ingest completed series until ``stop`` is set."""
        self.recover()
        self.purge_due()
        self.start()
        tick = min(1.0, self.cfg.quiet_seconds / 4)
        keep = self.cfg.keep_received
        next_purge = 0.0
        try:
            while not stop.wait(tick):
                self.ingest_due()
                if keep is not None and time.monotonic() >= next_purge:
                    self.purge_due()
                    next_purge = time.monotonic() + min(_PURGE_EVERY, keep / 2)
        finally:
            self.stop()


def _ago(seconds: float) -> str:
    return f"{seconds / 86400:g} d" if seconds >= 86400 else f"{seconds:g} s"


def serve_until_signalled(receiver: Receiver) -> None:
    """Run ``receiver`` in the foreground until SIGTERM or SIGINT (clean shutdown)."""
    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        receiver.serve(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _on_echo(_event: Any) -> int:
    return SUCCESS


def _calling(event: Any) -> str:
    return str(event.assoc.requestor.ae_title).strip()


_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _decoded(event: Any) -> Dataset:
    """The request's dataset; ValueError if it is visibly truncated. pydicom reads a cut-off
    data set without complaint (the last element just comes out short), so the checks are
    explicit: an image without pixel data, or native pixel data shorter than its header says."""
    ds: Dataset = event.dataset
    if "Rows" in ds and not any(k in ds for k in _PIXEL_KEYWORDS):
        raise ValueError("image attributes without pixel data")
    if "PixelData" in ds and not event.context.transfer_syntax.is_compressed:
        bits = int(ds.BitsAllocated)
        pixels = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                  * int(ds.get("NumberOfFrames", 1) or 1))
        expected = (pixels + 7) // 8 if bits == 1 else pixels * (bits // 8)
        if len(ds.PixelData) < expected:
            raise ValueError("pixel data shorter than Rows x Columns x frames")
    return ds


def _label(ds: Dataset, tag: str | None) -> str | None:
    if not tag:
        return None
    value = ds.get(tag)
    if value is None:
        return None
    return str(value).strip() or None


def receiver_config(sources: Mapping[str, Any], name: str | None, **overrides: Any,
                    ) -> tuple[str, DicomScpSourceConfig]:
    """The receiver's source name and config: ``data.sources.<name>`` (or the only dicom-scp
    source, or defaults named ``dicom-scp``), with the non-None ``overrides`` applied."""
    scp = {n: c for n, c in sources.items() if c.kind == "dicom-scp"}
    cfg: DicomScpSourceConfig
    if name is not None:
        if name not in sources:
            raise ConfigError(f"--source {name!r}: there is no data.sources.{name} in medops.yaml;"
                              f" dicom-scp sources there: {sorted(scp) or 'none'}")
        if name not in scp:
            raise ConfigError(f"--source {name!r}: data.sources.{name} is of kind "
                              f"{sources[name].kind!r}; the receiver needs kind dicom-scp")
        cfg = scp[name]
    elif len(scp) == 1:
        name, cfg = next(iter(scp.items()))
    elif scp:
        raise ConfigError(f"medops.yaml has several dicom-scp sources ({', '.join(sorted(scp))});"
                          " pick one with --source NAME")
    elif not overrides.get("allowed_calling_aets"):
        raise ConfigError("medops.yaml has no dicom-scp source under data.sources, so no sender "
                          "would be accepted; add one (e.g. scanner: {kind: dicom-scp, "
                          "allowed_calling_aets: [CT01]}) or pass --allow AE_TITLE")
    else:
        name, cfg = "dicom-scp", DicomScpSourceConfig(kind="dicom-scp")
    updates = {k: v for k, v in overrides.items() if v is not None}
    try:
        return name, DicomScpSourceConfig.model_validate({**cfg.model_dump(), **updates})
    except ValidationError as exc:
        bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"receiver option: {bad}") from None
