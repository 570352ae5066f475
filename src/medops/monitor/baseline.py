"""The reference a live model is compared with: features of images it never trained on.

Built at training time (the pipeline's evaluate step) from the validation and test splits,
pooled: neither was used for gradient steps (validation only picked the epoch), so their
embeddings and predictions are what in-distribution live traffic looks like, and pooling the
two doubles the reference sample the tests get. The training split would not do: the model's
embeddings and probabilities of images it fitted are tighter than those of any new image, so
live traffic would always look shifted.

Each row has exactly the columns the capture store keeps, computed by the same functions the
server uses: ``pre_*`` :func:`~medops.monitor.capture.intensity_stats` of the preprocessed
array (the preprocess cache holds what ``apply_profile`` returned), ``raw_*`` of the original
file decoded by :func:`~medops.data.images.read_pixels` with the profile's window (on a
bounded sample: decoding large radiographs is the slow part), the penultimate-layer embedding
(the head's input, :func:`medops.train.embed`) and the class probabilities
(:func:`medops.train.predict_proba`, test-time flips included, as the server's forward pass).
``label`` and ``predicted`` are text labels as the capture store keeps them: a class, or for a
multi-label model the findings as one canonical text (``A|B``, ``No Finding``), the predicted
ones at the model's per-finding thresholds; the metadata records the task.

The file, ``baseline.parquet``, is packed into the registered model folder, so it travels with
the version (``ModelRegistry.download``), and logged with the run's evaluation artifacts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from medops.config.enums import Task
from medops.data.labels import label_task
from medops.errors import DataError, MedopsError
from medops.monitor.capture import STAT_NAMES, intensity_stats

if TYPE_CHECKING:
    from medops.preprocess import PreprocessProfile
    from medops.train import Classifier

log = logging.getLogger(__name__)

BASELINE_FILE = "baseline.parquet"
_META_KEY = b"medops.baseline"
STAT_COLUMNS = tuple(f"{p}_{n}" for p in ("pre", "raw") for n in STAT_NAMES)


@dataclass(frozen=True)
class ReferenceSplit:
    """Images of one split: model inputs, training targets, and the original file (uri,
    frame) of each row. ``probabilities`` may be passed when already computed (the test
    split's)."""

    name: str
    x: np.ndarray  # (N, C, H, W) float32, as the preprocess cache holds it
    labels: np.ndarray  # (N,) class indices, or (N, K) multi-hot findings (LabelTask.targets)
    files: Sequence[tuple[str, int | None]]
    probabilities: np.ndarray | None = None


@dataclass
class Baseline:
    """Reference rows (capture-store columns plus ``split`` and ``label``) and metadata:
    classes, the versions' test metrics, sizes."""

    frame: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes", []))

    @property
    def task(self) -> Task:
        """The model's task (baselines written before multi-label models: multiclass)."""
        return Task(self.meta.get("task", Task.MULTICLASS.value))

    def save(self, path: Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        f = self.frame
        columns: dict[str, Any] = {
            "split": pa.array(f["split"], pa.string()),
            "label": pa.array(f["label"], pa.string()),
            "predicted": pa.array(f["predicted"], pa.string()),
            "probabilities": _list_column(matrix(f["probabilities"]), pa.float64()),
            "embedding": _list_column(matrix(f["embedding"]), pa.float32()),
        }
        columns.update({c: pa.array(f[c].to_numpy(np.float64)) for c in STAT_COLUMNS})
        table = pa.table(columns).replace_schema_metadata(
            {_META_KEY: json.dumps(self.meta, allow_nan=False, default=str).encode()})
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> Baseline:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the monitoring baseline {path}: {exc}") from exc
        meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        return cls(table.to_pandas(), meta)


def build_baseline(model: Classifier, classes: list[str], profile: PreprocessProfile,
                   splits: Sequence[ReferenceSplit], *, max_rows: int = 1000,
                   raw_sample: int = 200, seed: int = 0,
                   meta: dict[str, Any] | None = None,
                   thresholds: Sequence[float] | None = None) -> Baseline:
    """The baseline of ``model`` over ``splits``: at most ``max_rows`` rows (a seeded random
    sample when there are more), ``raw_*`` statistics for ``raw_sample`` of them.
    ``thresholds``: a multi-label model's per-finding thresholds (``classes`` order) that
    decide ``predicted`` (default 0.5)."""
    from medops.train import embed, predict_proba

    labels = label_task(model.spec.task)
    rng = np.random.default_rng(seed)
    total = sum(len(s.labels) for s in splits)
    keep = np.sort(rng.choice(total, max_rows, replace=False)) if total > max_rows \
        else np.arange(total)
    parts: list[pd.DataFrame] = []
    offset = 0
    for split in splits:
        n = len(split.labels)
        rows = keep[(keep >= offset) & (keep < offset + n)] - offset
        offset += n
        if rows.size == 0:
            continue
        x = np.ascontiguousarray(split.x[rows], dtype=np.float32)
        probs = (split.probabilities[rows] if split.probabilities is not None
                 else predict_proba(model, x))
        emb = embed(model, x)
        stats = pd.DataFrame([intensity_stats(image, "pre") for image in x])
        part = pd.DataFrame({
            "split": split.name, "label": labels.texts(split.labels[rows], classes),
            "predicted": [labels.label_text(d)
                          for d in labels.decide(probs, classes, thresholds)],
            "probabilities": list(np.asarray(probs, dtype=np.float64)),
            "embedding": list(np.asarray(emb, dtype=np.float32)),
            "_file": [split.files[int(i)] for i in rows]})
        parts.append(pd.concat([part, stats], axis=1))
    if not parts:
        raise DataError("no validation or test images to build the monitoring baseline from")
    frame = pd.concat(parts, ignore_index=True)
    frame = _add_raw_stats(frame, profile, raw_sample, rng)
    full_meta = {"classes": list(classes), "task": labels.task.value,
                 "created_at": datetime.now(timezone.utc).isoformat(),
                 "profile": profile.fingerprint(), "rows": len(frame),
                 "splits": {s: int((frame["split"] == s).sum()) for s in frame["split"].unique()},
                 "raw_rows": int(frame["raw_mean"].notna().sum()),
                 "embedding_dim": int(model.feature_dim), **(meta or {})}
    return Baseline(frame, full_meta)


def _add_raw_stats(frame: pd.DataFrame, profile: PreprocessProfile, raw_sample: int,
                   rng: np.random.Generator) -> pd.DataFrame:
    from medops.data.images import read_pixels

    raw = pd.DataFrame(np.nan, index=frame.index,
                       columns=[f"raw_{n}" for n in STAT_NAMES])
    chosen = rng.choice(len(frame), min(raw_sample, len(frame)), replace=False)
    failed = 0
    for i in np.sort(chosen):
        uri, frame_index = frame.at[i, "_file"]
        try:
            pixels = read_pixels(Path(uri), frame=frame_index, window=profile.window)
        except (MedopsError, OSError):  # a file moved since preprocessing: one row fewer
            failed += 1
            continue
        raw.loc[i] = pd.Series(intensity_stats(pixels, "raw"))
    if failed:
        log.warning("baseline: %d of %d original files could not be decoded for raw "
                    "statistics", failed, len(chosen))
    return pd.concat([frame.drop(columns="_file"), raw], axis=1)


def matrix(column: pd.Series | Sequence[Any]) -> np.ndarray:
    """A column of equal-length vectors (lists or arrays) as one (N, D) array."""
    values = list(column)
    if not values:
        return np.zeros((0, 0))
    try:
        return np.stack([np.asarray(v) for v in values])
    except ValueError as exc:
        raise DataError(f"vectors of different lengths in one column ({exc})") from exc


def _list_column(m: np.ndarray, value_type: Any) -> Any:
    import pyarrow as pa

    m = np.ascontiguousarray(m).reshape(len(m), -1)
    offsets = pa.array(np.arange(len(m) + 1, dtype=np.int32) * m.shape[1])
    return pa.ListArray.from_arrays(offsets, pa.array(m.reshape(-1), value_type))
