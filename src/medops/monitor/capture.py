"""The capture store: what the live model saw and answered, for drift and quality monitoring.

Parquet files under one folder (``<artifacts>/capture`` by default), partitioned by UTC day::

    requests/date=YYYY-MM-DD/part-<time>-<id>.parquet   one row per predicted image
    feedback/date=YYYY-MM-DD/part-<time>-<id>.parquet   ground truth that arrived later

Files are only ever added (a writer never rewrites one), so readers need no lock. With an object
store artifact root (``s3://...``) each file is uploaded as soon as it is written, and a reader
first fetches the files of its window that other machines wrote. Rows hold no PHI: a random
request id, the time, the model, the prediction, intensity statistics and the embedding --
never a file name, a patient, study or series identifier, or a DICOM UID.
"""

from __future__ import annotations

import csv
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medops.config.enums import Task
from medops.data.labels import label_task
from medops.errors import DataError, LabelError, MedopsError, StoreError
from medops.storage.artifact_sync import ArtifactSync

log = logging.getLogger(__name__)

CAPTURE_DIR = "capture"
#: The statistics kept per image, for the preprocessed input (``pre_*``) and raw pixels (``raw_*``).
STAT_NAMES = ("mean", "std", "min", "max", "p01", "p05", "p50", "p95", "p99")
_PERCENTILES = (1, 5, 50, 95, 99)
# A window up to this many days fetches its day partitions one by one; a longer one, the lot.
_DAYS_LISTED = 31
# Percentiles of a large raw image come from a strided sample of about this many pixels:
# exact enough for drift statistics, and a 2k x 2k radiograph costs ~1 ms instead of ~40 ms.
_SAMPLE_PIXELS = 65_536


def intensity_stats(x: np.ndarray, prefix: str) -> dict[str, float]:
    """Mean, std, min, max (exact) and percentiles (sampled when large) of an image array."""
    a = np.asarray(x, dtype=np.float32)
    flat = a.reshape(-1)
    step = max(1, flat.size // _SAMPLE_PIXELS)
    pcts = _percentiles(flat[::step]) if flat.size else [np.nan] * len(_PERCENTILES)
    values = [float(flat.mean(dtype=np.float64)), float(flat.std(dtype=np.float64)),
              float(flat.min()), float(flat.max()), *pcts]
    return {f"{prefix}_{n}": v for n, v in zip(STAT_NAMES, values, strict=True)}


def _percentiles(values: np.ndarray) -> list[float]:
    """``np.percentile(values, _PERCENTILES)`` (its default, linear interpolation) from one
    sort: numpy's general machinery costs ~0.2 ms a call, a served request makes two."""
    s = np.sort(values)
    pos = np.asarray(_PERCENTILES, dtype=np.float64) / 100.0 * (len(s) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(s) - 1)
    low, high = s[lo].astype(np.float64), s[hi].astype(np.float64)
    return [float(v) for v in low + (pos - lo) * (high - low)]


@dataclass(frozen=True)
class CaptureRecord:
    """One predicted image. ``image`` is its position in a multi-image request (0 otherwise)."""

    request_id: str
    image: int
    time: datetime  # timezone-aware UTC
    model_name: str
    model_version: str
    predicted: str  # the class, or the positive findings as one text ("A|B", "No Finding")
    classes: list[str]
    probabilities: list[float]
    input_format: str  # dicom, png or jpeg
    height: int  # of the raw image
    width: int
    stats: dict[str, float]  # intensity_stats(..., "pre") | intensity_stats(..., "raw")
    embedding: list[float] = field(default_factory=list)
    task: str = Task.MULTICLASS.value  # multilabel: independent probabilities, findings text

    def row(self) -> dict[str, Any]:
        base = {k: getattr(self, k) for k in _RECORD_FIELDS}
        base.update({f"{p}_{n}": self.stats.get(f"{p}_{n}", np.nan)
                     for p in ("pre", "raw") for n in STAT_NAMES})
        return base


@dataclass(frozen=True)
class Feedback:
    """The ground-truth ``label`` of image ``image`` of request ``request_id``."""

    request_id: str
    label: str
    image: int = 0
    time: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


_RECORD_FIELDS = ("request_id", "image", "time", "model_name", "model_version", "predicted",
                  "classes", "probabilities", "input_format", "height", "width", "embedding",
                  "task")


def _record_schema() -> Any:
    import pyarrow as pa

    stats = [pa.field(f"{p}_{n}", pa.float64()) for p in ("pre", "raw") for n in STAT_NAMES]
    return pa.schema([
        pa.field("request_id", pa.string()), pa.field("image", pa.int32()),
        pa.field("time", pa.timestamp("us", tz="UTC")), pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()), pa.field("predicted", pa.string()),
        pa.field("classes", pa.list_(pa.string())),
        pa.field("probabilities", pa.list_(pa.float64())),
        pa.field("input_format", pa.string()), pa.field("height", pa.int32()),
        pa.field("width", pa.int32()), pa.field("embedding", pa.list_(pa.float32())), *stats,
        # absent from files written before multi-label models: read as null (multiclass)
        pa.field("task", pa.string()),
    ])


def _feedback_schema() -> Any:
    import pyarrow as pa

    return pa.schema([pa.field("request_id", pa.string()), pa.field("image", pa.int32()),
                      pa.field("label", pa.string()),
                      pa.field("time", pa.timestamp("us", tz="UTC"))])


class CaptureStore:
    """Append captured predictions and feedback; read a time window joined with feedback."""

    def __init__(self, folder: Path, sync: ArtifactSync | None = None) -> None:
        """``sync``: the project's artifacts, when ``folder`` is under a shared root."""
        self.folder = Path(folder)
        self._sync = sync if sync is not None and sync.remote else None
        self._unsent: list[Path] = []  # written, not uploaded yet (the store was unreachable)
        self._swept: set[str] = set()
        self._lock = threading.Lock()

    @classmethod
    def under(cls, artifacts: Path | ArtifactSync) -> CaptureStore:
        """The project's store: ``<artifacts>/capture``; pass the project's
        :class:`ArtifactSync` to share it through a remote artifact root."""
        if isinstance(artifacts, ArtifactSync):
            return cls(artifacts.local / CAPTURE_DIR, artifacts)
        return cls(Path(artifacts) / CAPTURE_DIR)

    # -- writing ------------------------------------------------------------------------------

    def append(self, records: Sequence[CaptureRecord]) -> int:
        """Write ``records`` (one new file per day they fall on); the number written."""
        rows = [r.row() for r in records]
        self._write("requests", rows, _record_schema())
        return len(rows)

    def add_feedback(self, items: Sequence[Feedback]) -> int:
        """Store ground-truth labels; a later label for the same image supersedes earlier ones.

        Request ids are not checked against the captures: capture is written asynchronously,
        so feedback may legitimately arrive before its request's row is on disk."""
        rows = []
        for f in items:
            if not f.request_id.strip() or not f.label.strip():
                raise DataError(f"feedback needs a request id and a label (got "
                                f"request_id={f.request_id!r}, label={f.label!r})")
            rows.append({"request_id": f.request_id.strip(), "image": int(f.image),
                         "label": f.label.strip(), "time": f.time})
        self._write("feedback", rows, _feedback_schema())
        return len(rows)

    def import_feedback_csv(self, path: Path) -> int:
        """Add the labels of a CSV with columns ``request_id,label`` (and optionally ``image``).

        Unlike the HTTP endpoint (whose request may come before its capture is written), a
        file comes after the fact: every row must name a captured prediction and one of its
        classes (for a multi-label model: its findings as ``A|B``, or ``No Finding``), or
        nothing is imported."""
        path = Path(path)
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = set(reader.fieldnames or [])
                if not {"request_id", "label"} <= columns:
                    raise DataError(f"{path}: expected the columns request_id,label; found "
                                    f"{sorted(columns) or 'none'}")
                items = [_csv_feedback(row, path, n) for n, row in enumerate(reader, start=2)]
        except OSError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path} is not a readable CSV file ({exc})") from exc
        captured = self._captured_classes()
        checked = []
        for line, item in enumerate(items, start=2):
            found = captured.get((item.request_id, item.image))
            if found is None:
                raise DataError(
                    f"{path}, line {line}: no captured prediction has request_id "
                    f"{item.request_id!r} (image {item.image}); use the request ids of the "
                    "predict answers, which a server stores within seconds of answering "
                    "(nothing was imported)")
            task, classes = found
            try:
                label = label_task(task).canonical(item.label, classes)
            except LabelError as exc:
                raise LabelError(f"{path}, line {line}: {exc} (nothing was imported)") from exc
            checked.append(replace(item, label=label))
        return self.add_feedback(checked)

    def _captured_classes(self) -> dict[tuple[str, int], tuple[Task, list[str]]]:
        """{(request id, image): the predicting model's task and classes} of every captured
        image."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._fetch("requests", None, None)
        columns = ["request_id", "image", "classes", "task"]
        tables = [pq.read_table(p, columns=columns, schema=_record_schema())
                  for _, p in self._files("requests")]
        if not tables:
            return {}
        rows = pa.concat_tables(tables).to_pylist()
        return {(r["request_id"], r["image"]): (Task(r["task"] or Task.MULTICLASS),
                                                r["classes"]) for r in rows}

    def _write(self, kind: str, rows: list[dict[str, Any]], schema: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        by_day: dict[date, list[dict[str, Any]]] = {}
        for row in rows:
            t = row["time"]
            if t.tzinfo is None:
                raise ValueError("capture times must be timezone-aware")
            by_day.setdefault(t.astimezone(timezone.utc).date(), []).append(row)
        written: list[Path] = []
        for day, day_rows in by_day.items():
            folder = self.folder / kind / f"date={day.isoformat()}"
            stamp = datetime.now(timezone.utc).strftime("%H%M%S%f")
            final = folder / f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = final.with_suffix(".tmp")
            try:
                folder.mkdir(parents=True, exist_ok=True)
                table = pa.Table.from_pylist(day_rows, schema=schema)
                pq.write_table(table, tmp)
                tmp.replace(final)  # readers never see a half-written file
            except OSError as exc:
                raise StoreError(f"cannot write the capture store at {folder}: {exc}") from exc
            written.append(final)
        self._share(kind, written)

    def _share(self, kind: str, written: list[Path]) -> None:
        """Upload the new files, and those an earlier attempt could not: a monitor on another
        machine reads them. A failure leaves them here for the next write (the rows are on
        disk: writing them again would count them twice)."""
        if self._sync is None:
            return
        with self._lock:
            if kind not in self._swept:  # what an earlier process left behind
                self._sync.publish(self.folder / kind, strict=False)
                self._swept.add(kind)
            unsent, error = [], None
            for path in [*self._unsent, *written]:
                try:
                    self._sync.publish(path)
                except MedopsError as exc:
                    unsent.append(path)
                    error = exc
            self._unsent = unsent
        if unsent:
            log.warning("%d capture file(s) not uploaded yet, kept in %s for the next write: %s",
                        len(unsent), self.folder, error)

    # -- reading ------------------------------------------------------------------------------

    def read(self, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
        """Captured images with ``start <= time < end`` (UTC), oldest first, with the latest
        ground truth joined as ``label`` and ``feedback_time`` (missing: None / NaT)."""
        frame = self._read("requests", _record_schema(), start, end)
        truth = self.feedback()
        if not truth.empty:
            truth = (truth.sort_values("time").drop_duplicates(["request_id", "image"],
                                                               keep="last")
                     .rename(columns={"time": "feedback_time"}))
        else:
            truth = truth.rename(columns={"time": "feedback_time"})
        merged = frame.merge(truth, on=["request_id", "image"], how="left")
        return merged.sort_values(["time", "request_id", "image"]).reset_index(drop=True)

    def feedback(self) -> pd.DataFrame:
        """Every stored feedback row: request_id, image, label, time."""
        return self._read("feedback", _feedback_schema(), None, None)

    def _read(self, kind: str, schema: Any, start: datetime | None,
              end: datetime | None) -> pd.DataFrame:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._fetch(kind, start, end)
        files = [p for day, p in self._files(kind) if _day_in(day, start, end)]
        tables = [pq.read_table(p, schema=schema) for p in files]
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        frame = table.to_pandas()
        if start is not None:
            frame = frame[frame["time"] >= pd.Timestamp(_utc(start))]
        if end is not None:
            frame = frame[frame["time"] < pd.Timestamp(_utc(end))]
        return frame.reset_index(drop=True)

    def _fetch(self, kind: str, start: datetime | None, end: datetime | None) -> None:
        """Bring the files of the window that other machines wrote (a shared root only): the
        partitions of each day in it, or the whole kind when the window is open or long."""
        if self._sync is None:
            return
        base = self.folder / kind
        if start is None or end is None or end - start > timedelta(days=_DAYS_LISTED):
            self._sync.ensure_local(base)
            return
        day, last = _utc(start).date(), _utc(end).date()
        while day <= last:
            self._sync.ensure_local(base / f"date={day.isoformat()}")
            day += timedelta(days=1)

    def _files(self, kind: str) -> Iterable[tuple[date, Path]]:
        base = self.folder / kind
        if not base.is_dir():
            return []
        found: list[tuple[date, Path]] = []
        for folder in sorted(base.glob("date=*")):
            try:
                day = date.fromisoformat(folder.name[len("date="):])
            except ValueError:
                continue  # not a partition medops wrote
            found.extend((day, p) for p in sorted(folder.glob("part-*.parquet")))
        return found


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _day_in(day: date, start: datetime | None, end: datetime | None) -> bool:
    if start is not None and day < _utc(start).date():
        return False
    return not (end is not None and day > (_utc(end) - timedelta(microseconds=1)).date())


def _csv_feedback(row: dict[str, str | None], path: Path, line: int) -> Feedback:
    request_id, label = (row.get("request_id") or "").strip(), (row.get("label") or "").strip()
    if not request_id or not label:
        raise DataError(f"{path}, line {line}: request_id and label must both be set")
    image_text = (row.get("image") or "0").strip() or "0"
    try:
        image = int(image_text)
    except ValueError:
        raise DataError(
            f"{path}, line {line}: image must be an integer (got {image_text!r})") from None
    return Feedback(request_id=request_id, label=label, image=image)
