"""The folder layout of batch predictions: two Parquet tables made of part files.

::

    OUT/predictions/part-<id>.parquet   uri, p_<class>..., label, [findings], model, version
    OUT/errors/part-<id>.parquet        uri, error

Each folder reads as one table (pandas, pyarrow, Spark, Athena). A shard holds the files of one
chunk (local executor) or one partition (Spark); its id is a hash of those files' URIs and the
model version, so a Spark task that is retried, or run twice speculatively, writes the same
part files again instead of new ones. A part file appears whole (an S3 PUT, a local rename):
readers never see half of one, and a killed run loses only the shards in flight.

Resume: a run reads only the ``uri``, ``model`` and ``version`` columns of the existing
predictions, refuses an output holding another model version, and predicts the rest. The files
that failed before are tried again; once the run completes, the errors table holds exactly the
files that failed in it (the earlier error part files it did not rewrite are deleted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pandas as pd

from medops.serve.batch import BatchOutput, Predictor, empty_frame, other_model_error
from medops.serve.batch_files import Files, OutputFormat

if TYPE_CHECKING:
    from medops.executor.spark import SparkExecutor

PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"
ERROR_COLUMNS = ("uri", "error")
_EMPTY = f"{PART_PREFIX}empty{PART_SUFFIX}"  # keeps a table readable before it has rows
_READERS = 8  # part files read at once when a run resumes (S3 GETs wait on the network)


@dataclass(frozen=True)
class ShardResult:
    """What writing one shard produced: its id and how many files went into each table."""

    shard: str
    predicted: int
    failed: int


@dataclass
class FolderResult:
    predicted: int
    skipped: int
    errors: list[dict[str, str]] = field(default_factory=list)


def shard_id(uris: Iterable[str], name: str, version: str) -> str:
    """The part-file name of a shard: the same files with the same model, the same name."""
    digest = hashlib.sha256(f"{name}\n{version}\n".encode())
    for uri in sorted(uris):
        digest.update(uri.encode() + b"\n")
    return f"{PART_PREFIX}{digest.hexdigest()[:32]}{PART_SUFFIX}"


def write_shard(rows: pd.DataFrame, target: BatchOutput, predictor: Predictor,
                files: Files) -> ShardResult:
    """Split predicted rows (one per file, ``error`` None when predicted) into the two tables
    and write each non-empty part."""
    shard = shard_id(rows["uri"], predictor.name, predictor.version)
    failed = rows["error"].notna()
    good = rows.loc[~failed, predictor.prediction_columns].reset_index(drop=True)
    bad = rows.loc[failed, list(ERROR_COLUMNS)].reset_index(drop=True)
    if len(good):
        _write(good, target.predictions + shard, files)
    if len(bad):
        _write(bad, target.errors + shard, files)
    return ShardResult(shard, len(good), len(bad))


def _write(frame: pd.DataFrame, uri: str, files: Files) -> None:
    # One explicit schema for every part: an empty or all-null column would otherwise be
    # typed null in one file and string in the next, and readers of the folder disagree.
    import pyarrow as pa

    schema = pa.schema([(c, pa.float64() if c.startswith("p_") else pa.string())
                        for c in frame.columns])
    files.write_table(frame, uri, OutputFormat.PARQUET, schema=schema)


def _parts(folder: str, files: Files) -> list[str]:
    return [u for u in files.list_dir(folder) if _name(u).startswith(PART_PREFIX)
            and u.endswith(PART_SUFFIX)]


def _name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def predicted_uris(target: BatchOutput, predictor: Predictor, files: Files) -> set[str]:
    """The files the predictions table already holds; ConfigError if another model version
    wrote any of them."""
    parts = _parts(target.predictions, files)
    with ThreadPoolExecutor(_READERS) as pool:
        frames = list(pool.map(
            lambda u: files.read_table(u, columns=["uri", "model", "version"]), parts))
    done: set[str] = set()
    for frame in frames:
        if not len(frame):
            continue
        versions = frame[["model", "version"]].astype(str).drop_duplicates()
        other = versions[(versions["model"] != predictor.name)
                         | (versions["version"] != predictor.version)]
        if len(other):
            found = f"{other['model'].iloc[0]} v{other['version'].iloc[0]}"
            raise other_model_error(target.uri, found, predictor)
        done.update(frame["uri"].astype(str))
    return done


def predict_into_folder(predictor: Predictor, uris: Sequence[str], target: BatchOutput,
                        files: Files, *, chunk_size: int,
                        on_progress: Callable[[int, int], None] | None,
                        executor: SparkExecutor | None = None) -> FolderResult:
    """Predict the files of ``uris`` not yet in ``target``'s predictions table, in this
    process or, with ``executor``, in Spark tasks that write their shards themselves."""
    done = predicted_uris(target, predictor, files)
    earlier_errors = _parts(target.errors, files)
    todo = [u for u in uris if u not in done]
    if on_progress:
        on_progress(0, len(todo))
    if executor is not None:
        from medops.serve.batch_spark import predict_on_spark

        results = predict_on_spark(executor, predictor, todo, target, files,
                                   chunk_size=chunk_size, on_progress=on_progress)
        errors = _read_errors(target, [r.shard for r in results if r.failed], files)
    else:
        results, errors = [], []
        for start in range(0, len(todo), chunk_size):
            rows = predictor.predict(todo[start:start + chunk_size], files)
            results.append(write_shard(rows, target, predictor, files))
            bad = rows[rows["error"].notna()]
            errors += [{"uri": u, "error": e}
                       for u, e in zip(bad["uri"], bad["error"], strict=True)]
            if on_progress:
                on_progress(min(start + chunk_size, len(todo)), len(todo))
    rewritten = {r.shard for r in results if r.failed}
    for uri in earlier_errors:  # every file in them was tried again in this run
        if _name(uri) not in rewritten:
            files.remove(uri)
    _keep_readable(target.predictions, predictor.prediction_columns, files)
    _keep_readable(target.errors, ERROR_COLUMNS, files)
    return FolderResult(predicted=sum(r.predicted for r in results),
                        skipped=len(uris) - len(todo), errors=errors)


def _read_errors(target: BatchOutput, shards: list[str], files: Files) -> list[dict[str, str]]:
    with ThreadPoolExecutor(_READERS) as pool:
        frames = list(pool.map(lambda s: files.read_table(target.errors + s), shards))
    return [{"uri": str(u), "error": str(e)} for frame in frames
            for u, e in zip(frame["uri"], frame["error"], strict=True)]


def _keep_readable(folder: str, columns: Sequence[str], files: Files) -> None:
    """An empty part file in a table that has none, so that the folder always reads as a
    table with its columns (pandas cannot read a folder without files)."""
    parts = _parts(folder, files)
    empty = folder + _EMPTY
    if not parts:
        _write(empty_frame(columns), empty, files)
    elif len(parts) > 1 and any(_name(p) == _EMPTY for p in parts):
        files.remove(empty)


def read_table(folder: str, files: Files, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """One of the layout's tables (``BatchOutput.predictions`` or ``.errors``) as one frame."""
    parts = _parts(folder, files)
    with ThreadPoolExecutor(_READERS) as pool:
        frames = list(pool.map(lambda u: files.read_table(u, columns=columns), parts))
    frames = [f for f in frames if len(f)] or frames[:1]
    if not frames:
        return pd.DataFrame(columns=list(columns or []))
    return pd.concat(frames, ignore_index=True)
