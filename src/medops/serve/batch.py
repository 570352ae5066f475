"""Batch inference: a folder, a manifest or an S3 prefix in, one prediction row per file out.

Rows: ``uri``, ``p_<class>`` for each class, ``label``, ``model``, ``version`` and ``error``
(None when the file was predicted); a multi-label model's rows have a ``p_<finding>`` column
per finding, and ``findings`` (the positive findings ``|``-joined, empty for none) after
``label`` (the same findings as one canonical text, ``No Finding`` for none).

Two output layouts:

- a file, ``OUT.parquet`` or ``OUT.csv``: finished chunks are written as they complete
  (``OUT.parts/``) and merged into OUT at the end; a bad file's row carries its error;
- a folder (``OUT/``, or a name without a suffix): two Parquet tables of part files,
  ``OUT/predictions/`` (the rows above without ``error``) and ``OUT/errors/`` (``uri``,
  ``error``), written shard by shard (:mod:`medops.serve.batch_shards`); the only layout of the
  Spark executor, whose tasks write the shards themselves (:mod:`medops.serve.batch_spark`).

A bad file (corrupt, truncated, not an image) never stops the batch. A killed run loses at
most the chunks in flight, and a re-run skips every file already predicted by the same model
version and tries the failed ones again.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
import pandas as pd

from medops.errors import ConfigError, DataError, DependencyMissingError, NotFoundError
from medops.preprocess import preprocess_bytes
from medops.registry import CHAMPION, LoadedModel, ModelRegistry, ModelVersionInfo
from medops.serve.batch_files import (
    Files,
    OutputFormat,
    access_fix,
    error_reason,
    is_s3,
    local_path,
)
from medops.serve.outputs import FINDINGS, findings_text, predictions
from medops.train import predict_proba

if TYPE_CHECKING:
    from medops.executor import Executor
    from medops.executor.spark import SparkExecutor

__all__ = ["BatchOutput", "BatchSummary", "Files", "ModelLocation", "ModelRef", "OutputFormat",
           "Predictor", "batch_output", "batch_predict", "empty_frame", "is_s3", "list_inputs",
           "other_model_error", "output_format"]

#: Files a folder or prefix may hold that are not images (FolderSource skips the same ones).
_NOT_IMAGES = {".csv", ".txt", ".md", ".json", ".yaml", ".yml", ".parquet", ".ds_store"}
_READERS = 8  # threads reading and decoding files; I/O and image codecs release the GIL


@dataclass(frozen=True)
class ModelRef:
    """``NAME@ALIAS``, ``NAME/VERSION`` or ``NAME`` (= ``NAME@champion``)."""

    name: str
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str | None, default_name: str) -> ModelRef:
        if not text:
            return cls(default_name, alias=CHAMPION)
        if "@" in text:
            name, alias = text.split("@", 1)
            ref = cls(name or default_name, alias=alias)
        elif "/" in text:
            name, version = text.rsplit("/", 1)
            ref = cls(name or default_name, version=version)
        else:
            ref = cls(text, alias=CHAMPION)
        if not (ref.alias or ref.version):
            raise ConfigError(f"--model {text!r}: expected NAME@ALIAS or NAME/VERSION, "
                              f"e.g. {default_name}@{CHAMPION} or {default_name}/3")
        return ref

    def __str__(self) -> str:
        return f"{self.name}@{self.alias}" if self.alias else f"{self.name}/{self.version}"


@dataclass(frozen=True)
class ModelLocation:
    """Where a registered version can be loaded from by another process or machine: what a
    Spark task receives instead of the model itself."""

    tracking_uri: str  # the MLflow tracking and registry store
    name: str
    version: str
    # The version's artifact URI (it holds the run or logged-model id): a worker's model
    # cache is keyed by it, so a registry recreated with another "version 1" is never served
    # from a stale copy.
    source: str


@dataclass
class Predictor:
    """A loaded model version and how to batch its forward passes."""

    model: LoadedModel
    name: str
    version: str
    batch_size: int = 32
    location: ModelLocation | None = None  # None: a model that was not loaded from a registry

    @classmethod
    def from_registry(cls, registry: ModelRegistry, ref: ModelRef,
                      batch_size: int = 32) -> Predictor:
        info: ModelVersionInfo | None
        if ref.version is not None:
            registry.check_exists()
            info = registry.get(ref.version)
        else:
            info = registry.by_alias(ref.alias or CHAMPION)
            if info is None:
                registry.check_exists()  # no such model at all: the error lists the known ones
                raise NotFoundError(
                    f"{ref} does not exist; approve a version (`medops models approve "
                    f"{ref.name} VERSION ...`) or name one: --model {ref.name}/VERSION")
        location = ModelLocation(str(registry.client.tracking_uri), registry.name,
                                 info.version, info.source)
        return cls(registry.load(info.version), registry.name, info.version, batch_size,
                   location)

    @property
    def prediction_columns(self) -> list[str]:
        """The columns of the folder layout's predictions table: :attr:`columns` less
        ``error``."""
        return [c for c in self.columns if c != "error"]

    @property
    def columns(self) -> list[str]:
        findings = [FINDINGS] if self.model.labels.multilabel else []
        return ["uri", *(f"p_{c}" for c in self.model.classes), "label", *findings, "model",
                "version", "error"]

    def predict(self, uris: Sequence[str], files: Files) -> pd.DataFrame:
        """One row per URI, in order; a file that cannot be read or decoded gets its error."""
        with ThreadPoolExecutor(_READERS) as pool:
            loaded = list(pool.map(lambda u: self._load(u, files), uris))
        good = [i for i, (x, _) in enumerate(loaded) if x is not None]
        arrays = [x for x, _ in loaded if x is not None]
        probs = np.full((len(uris), len(self.model.classes)), np.nan)
        if arrays:
            probs[good] = predict_proba(self.model.model, np.stack(arrays),
                                        batch_size=self.batch_size)
        classes = self.model.classes
        frame = pd.DataFrame(probs, columns=[f"p_{c}" for c in classes])
        frame.insert(0, "uri", list(uris))
        answers = dict(zip(good, predictions(self.model, probs[good]), strict=True))
        frame["label"] = [answers[i]["label"] if i in answers else None
                          for i in range(len(uris))]
        if self.model.labels.multilabel:
            frame[FINDINGS] = [findings_text(answers[i][FINDINGS]) if i in answers else None
                               for i in range(len(uris))]
        frame["model"] = self.name
        frame["version"] = self.version
        frame["error"] = [err for _, err in loaded]
        return frame[self.columns]

    def _load(self, uri: str, files: Files) -> tuple[np.ndarray | None, str | None]:
        try:
            blob = files.read_bytes(uri)
        except Exception as exc:  # missing, unreadable, denied: this file's row says which
            return None, f"cannot read ({type(exc).__name__}: {exc})"
        try:
            return preprocess_bytes(blob, self.model.profile), None
        except DataError as exc:
            return None, _without_size(str(exc))
        except Exception as exc:  # a decoder bug on one hostile file must not end the batch
            return None, f"cannot decode ({type(exc).__name__}: {exc})"


@dataclass
class BatchSummary:
    source: str
    out: str
    model: str
    version: str
    total: int  # files found
    predicted: int  # predicted in this run
    skipped: int  # already predicted by an earlier run
    failed: int  # could not be read or decoded (their rows carry the error)
    seconds: float
    errors: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_inputs(source: str, files: Files) -> list[str]:
    """The image URIs of ``source``: a folder (recursively), a Parquet manifest with a column
    ``uri``, an ``s3://`` prefix, or one image file. ConfigError, naming ``source`` and the
    reason, when it cannot be listed (no such bucket, no credentials, permission denied)."""
    try:
        return _list_inputs(source, files)
    except (ConfigError, DependencyMissingError):
        raise
    except Exception as exc:  # boto3's and the filesystem's errors, one clear message
        raise ConfigError(f"cannot read the batch's source {source}: {error_reason(exc)}; "
                          f"{access_fix(source)}") from exc


def _list_inputs(source: str, files: Files) -> list[str]:
    if not is_s3(source) and local_path(source).is_dir():
        with os.scandir(local_path(source)):  # an unreadable folder: os.walk would say "empty"
            pass
    if source.endswith(".parquet"):
        if not files.exists(source):
            raise ConfigError(f"manifest {source} does not exist")
        frame = files.read_table(source)
        if "uri" not in frame.columns:
            raise ConfigError(f"manifest {source} has no column 'uri' (columns: "
                              f"{', '.join(map(str, frame.columns))})")
        return _unique(str(u) for u in frame["uri"].dropna())
    if files.is_dir(source):
        found = files.find(source)
        return sorted(u for u in found if _looks_like_image(u))
    if files.exists(source):
        return [source if is_s3(source) else str(local_path(source).resolve())]
    raise ConfigError(f"{source} is neither a folder, an s3:// prefix, a Parquet manifest nor "
                      "an image file")


@dataclass(frozen=True)
class BatchOutput:
    """Where a batch writes: one file (``.parquet``/``.csv``), or a folder of two Parquet
    tables, ``predictions/`` and ``errors/``."""

    uri: str
    format: OutputFormat
    folder: bool

    @property
    def predictions(self) -> str:
        return f"{self.uri.rstrip('/')}/predictions/"

    @property
    def errors(self) -> str:
        return f"{self.uri.rstrip('/')}/errors/"


def batch_output(out: str, fmt: OutputFormat | None = None, *,
                 spark: bool = False) -> BatchOutput:
    """Where ``out`` says to write: a folder when it ends with '/' or has no suffix (always
    Parquet), else a file whose suffix, .parquet or .csv, ``fmt`` (when given) must agree
    with; ``spark``: only a folder will do. A local ``out`` must be writable. Checked before
    any image is read, so a bad --out costs no predictions."""
    suffix = PurePosixPath(out).suffix.lower()
    folder = out.endswith("/") or not suffix or (not is_s3(out) and local_path(out).is_dir())
    formats = [f".{f.value}" for f in OutputFormat]
    if folder:
        if fmt is not None and fmt is not OutputFormat.PARQUET:
            raise ConfigError(f"--out {out} is a folder, which holds Parquet tables; drop "
                              f"--format {fmt.value} or name an output file .{fmt.value}")
        found = OutputFormat.PARQUET
    elif suffix not in formats:
        raise ConfigError(f"--out {out}: batch predictions are written as Parquet or CSV; name "
                          f"the output file {' or '.join(formats)} (e.g. preds.parquet), or a "
                          "folder ending in '/' for Parquet tables of predictions and errors")
    else:
        found = OutputFormat(suffix[1:])
        if fmt is not None and fmt is not found:
            raise ConfigError(f"--out {out} is a {suffix} file but --format is {fmt.value}; "
                              f"drop --format or name the output file .{fmt.value}")
    if spark and not folder:
        raise ConfigError(f"--out {out}: the Spark executor writes a folder of Parquet part "
                          f"files; name a folder, e.g. --out {_folder_for(out)}")
    if not is_s3(out):
        target = local_path(out).resolve()
        _check_writable(out, target if folder else target.parent)
    return BatchOutput(out, found, folder)


def _check_writable(out: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medops-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write in {folder} ({exc.strerror or exc}); "
                          "choose a folder you can write to") from None


def output_format(out: str, fmt: OutputFormat | None = None) -> OutputFormat:
    """The format ``out`` is written in (see :func:`batch_output`, which also checks it)."""
    return batch_output(out, fmt).format


def batch_predict(predictor: Predictor, source: str, out: str,
                  fmt: OutputFormat | None = None, *, files: Files | None = None,
                  chunk_size: int = 256,
                  on_progress: Callable[[int, int], None] | None = None,
                  executor: Executor | None = None) -> BatchSummary:
    """Predict every image of ``source`` into ``out`` (a .parquet or .csv file, or a folder
    of Parquet tables; local or ``s3://``), skipping files an earlier run already predicted
    with the same model version. ``executor``: a Spark executor runs the batch on its cluster
    (folder outputs only); any other, or None, predicts in this process."""
    started = time.perf_counter()
    files = files or Files()
    spark = executor if _is_spark(executor) else None
    target = batch_output(out, fmt, spark=spark is not None)
    if is_s3(out):
        files.check_bucket(out)
    uris = list_inputs(source, files)
    if target.folder:
        from medops.serve.batch_shards import predict_into_folder

        result = predict_into_folder(predictor, uris, target, files, chunk_size=chunk_size,
                                     on_progress=on_progress, executor=spark)
        return BatchSummary(
            source=source, out=out, model=predictor.name, version=predictor.version,
            total=len(uris), predicted=result.predicted, skipped=result.skipped,
            failed=len(result.errors), seconds=round(time.perf_counter() - started, 3),
            errors=result.errors)
    return _predict_into_file(predictor, source, uris, target, files, chunk_size, on_progress,
                              started)


def _is_spark(executor: Executor | None) -> TypeGuard[SparkExecutor]:
    from medops.executor.spark import SparkExecutor  # light: pyspark loads with a session

    return isinstance(executor, SparkExecutor)


def _folder_for(out: str) -> str:
    path = PurePosixPath(out)
    return f"{out[:-len(path.suffix)] if path.suffix else out}/"


def _predict_into_file(predictor: Predictor, source: str, uris: list[str], target: BatchOutput,
                       files: Files, chunk_size: int,
                       on_progress: Callable[[int, int], None] | None,
                       started: float) -> BatchSummary:
    out, fmt = target.uri, target.format
    parts = out.rstrip("/") + ".parts"
    earlier = _earlier_rows(out, parts, fmt, files, predictor)
    done = set(earlier.loc[earlier["error"].isna(), "uri"]) if len(earlier) else set()
    todo = [u for u in uris if u not in done]
    if on_progress:
        on_progress(0, len(todo))
    new: list[pd.DataFrame] = []
    for start in range(0, len(todo), chunk_size):
        rows = predictor.predict(todo[start:start + chunk_size], files)
        files.write_table(rows, f"{parts}/part-{uuid.uuid4().hex}.parquet", OutputFormat.PARQUET)
        new.append(rows)
        if on_progress:
            on_progress(min(start + chunk_size, len(todo)), len(todo))
    merged = pd.concat([earlier, *new], ignore_index=True) if new else earlier
    if len(merged) == 0:
        merged = empty_frame(predictor.columns)
    merged = merged.drop_duplicates("uri", keep="last").reset_index(drop=True)
    files.write_table(merged[predictor.columns], out, fmt)
    files.remove_tree(parts)
    fresh = pd.concat(new, ignore_index=True) if new else merged.iloc[0:0]
    bad = fresh[fresh["error"].notna()]
    return BatchSummary(
        source=source, out=out, model=predictor.name, version=predictor.version,
        total=len(uris), predicted=int(len(fresh) - len(bad)), skipped=len(uris) - len(todo),
        failed=len(bad), seconds=round(time.perf_counter() - started, 3),
        errors=[{"uri": u, "error": e} for u, e in zip(bad["uri"], bad["error"], strict=True)])


def _earlier_rows(out: str, parts: str, fmt: OutputFormat, files: Files,
                  predictor: Predictor) -> pd.DataFrame:
    """Rows of an earlier run: the merged output and the chunks of a run that was killed."""
    frames = [files.read_table(out, fmt)] if files.exists(out) else []
    if files.is_dir(parts):
        frames += [files.read_table(p) for p in sorted(files.find(parts))
                   if p.endswith(".parquet")]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame(predictor.columns)
    rows = pd.concat(frames, ignore_index=True)
    found = None
    if any(c not in rows.columns for c in predictor.columns):
        found = f"another model (columns {', '.join(map(str, rows.columns))})"
    else:
        rows["version"] = rows["version"].astype(str)
        other = rows[(rows["model"] != predictor.name) | (rows["version"] != predictor.version)]
        if len(other):
            found = f"{other['model'].iloc[0]} v{other['version'].iloc[0]}"
    if found:
        raise other_model_error(out, found, predictor)
    rows["error"] = rows["error"].astype(object).where(rows["error"].notna(), None)
    return rows[predictor.columns]


def other_model_error(out: str, found: str, predictor: Predictor) -> ConfigError:
    """Refusing to mix two models' predictions in one output; ``found`` is "NAME vVERSION"
    (or a description of the columns found)."""
    name, _, version = found.rpartition(" v")
    resume = (f", or finish that batch with --model {name}/{version}"
              if name and version.isdigit() else "")
    return ConfigError(
        f"{out} already holds predictions of {found}, not {predictor.name} "
        f"v{predictor.version}; write to another --out, or delete {out} to start over"
        f"{resume}")


def empty_frame(columns: Sequence[str]) -> pd.DataFrame:
    """No rows, with the types a table of these columns has."""
    return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in columns})


def _dtype(column: str) -> str:
    return "float64" if column.startswith("p_") else "object"


def _looks_like_image(uri: str) -> bool:
    name = uri.rsplit("/", 1)[-1]
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    return not name.startswith(".") and suffix not in _NOT_IMAGES


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _without_size(message: str) -> str:
    # Decoders name in-memory files "<N bytes>"; the row's uri already says which file it is.
    if message.startswith("<") and ">: " in message:
        return message.split(">: ", 1)[1]
    return message
