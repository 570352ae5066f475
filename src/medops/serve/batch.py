"""Batch inference: a folder, a manifest or an S3 prefix in, one prediction row per file out.

Rows: ``uri``, ``p_<class>`` for each class, ``label``, ``model``, ``version`` and ``error``
(None when the file was predicted); a multi-label model's rows have a ``p_<finding>`` column
per finding, and ``findings`` (the positive findings ``|``-joined, empty for none) after
``label`` (the same findings as one canonical text, ``No Finding`` for none).

A bad file (corrupt, truncated, not an image) gets its error in that row; the rest of the batch
goes on. Finished chunks are written as they complete (``OUT.parts/``) and merged into OUT at
the end, so a killed run loses at most one chunk, and a re-run skips every file already
predicted by the same model version.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from medops.config.enums import StrEnum
from medops.data.sources.folder import visible_files
from medops.errors import ConfigError, DataError, DependencyMissingError, NotFoundError
from medops.preprocess import preprocess_bytes
from medops.registry import CHAMPION, LoadedModel, ModelRegistry
from medops.serve.outputs import FINDINGS, findings_text, predictions
from medops.train import predict_proba

#: Files a folder or prefix may hold that are not images (FolderSource skips the same ones).
_NOT_IMAGES = {".csv", ".txt", ".md", ".json", ".yaml", ".yml", ".parquet", ".ds_store"}
_TEXT_COLUMNS = ("uri", "label", FINDINGS, "model", "version", "error")
_READERS = 8  # threads reading and decoding files; I/O and image codecs release the GIL


class OutputFormat(StrEnum):
    PARQUET = "parquet"
    CSV = "csv"


class Files:
    """Local paths and ``s3://`` URIs (through boto3) behind the few operations batches need."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        self._endpoint_url = endpoint_url
        self._client: Any = None

    def _s3(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ModuleNotFoundError as exc:
                raise DependencyMissingError("boto3", "aws", "s3:// inputs and outputs") from exc
            self._client = boto3.client("s3", endpoint_url=self._endpoint_url)
        return self._client

    def _keys(self, uri: str) -> list[str]:
        bucket, prefix = _split_s3(uri)
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                    Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            return bytes(self._s3().get_object(Bucket=bucket, Key=key)["Body"].read())
        return _local(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            _, key = _split_s3(uri)
            return any(k == key or k.startswith(key.rstrip("/") + "/") for k in self._keys(uri))
        return _local(uri).exists()

    def is_dir(self, uri: str) -> bool:
        if is_s3(uri):
            return bool(self._keys(uri.rstrip("/") + "/"))
        return _local(uri).is_dir()

    def find(self, uri: str) -> list[str]:
        """Every file under a folder or prefix, recursively, as URIs like ``uri``; hidden files
        and folders (a name starting with '.') are left out."""
        if is_s3(uri):
            bucket, prefix = _split_s3(uri.rstrip("/") + "/")
            return sorted(f"s3://{bucket}/{key}" for key in self._keys(uri.rstrip("/") + "/")
                          if not any(part.startswith(".")
                                     for part in key[len(prefix):].split("/")))
        return [str(p) for p in visible_files(_local(uri).resolve())]

    def read_table(self, uri: str, fmt: OutputFormat = OutputFormat.PARQUET) -> pd.DataFrame:
        source: Any = io.BytesIO(self.read_bytes(uri)) if is_s3(uri) else _local(uri)
        if fmt is OutputFormat.CSV:
            return pd.read_csv(source, dtype={c: str for c in _TEXT_COLUMNS})
        return pd.read_parquet(source)

    def write_table(self, frame: pd.DataFrame, uri: str, fmt: OutputFormat) -> None:
        buf = io.BytesIO()
        if fmt is OutputFormat.CSV:
            buf.write(frame.to_csv(index=False).encode())
        else:
            frame.to_parquet(buf, index=False)
        if is_s3(uri):  # a PUT is atomic: readers never see half an object
            bucket, key = _split_s3(uri)
            self._s3().put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
            return
        path = _local(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)  # readers never see half a file

    def remove_tree(self, uri: str) -> None:
        if is_s3(uri):
            bucket, _ = _split_s3(uri)
            keys = self._keys(uri.rstrip("/") + "/")
            for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
                chunk = [{"Key": k} for k in keys[start:start + 1000]]
                self._s3().delete_objects(Bucket=bucket, Delete={"Objects": chunk})
        else:
            shutil.rmtree(_local(uri), ignore_errors=True)


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _local(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


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


@dataclass
class Predictor:
    """A loaded model version and how to batch its forward passes."""

    model: LoadedModel
    name: str
    version: str
    batch_size: int = 32

    @classmethod
    def from_registry(cls, registry: ModelRegistry, ref: ModelRef,
                      batch_size: int = 32) -> Predictor:
        if ref.version is not None:
            version = registry.get(ref.version).version
        else:
            info = registry.by_alias(ref.alias or CHAMPION)
            if info is None:
                raise NotFoundError(
                    f"{ref} does not exist; approve a version (`medops models approve "
                    f"{ref.name} VERSION ...`) or name one: --model {ref.name}/VERSION")
            version = info.version
        return cls(registry.load(version), registry.name, version, batch_size)

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
    ``uri``, an ``s3://`` prefix, or one image file."""
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
        return [source if is_s3(source) else str(_local(source).resolve())]
    raise ConfigError(f"{source} is neither a folder, an s3:// prefix, a Parquet manifest nor "
                      "an image file")


def output_format(out: str, fmt: OutputFormat | None = None) -> OutputFormat:
    """The format ``out`` is written in: its suffix, .parquet or .csv, which ``fmt`` (when
    given) must agree with; and a local ``out`` must be writable. Checked before any image is
    read, so a bad --out costs no predictions."""
    suffix = PurePosixPath(out).suffix.lower()
    formats = [f".{f.value}" for f in OutputFormat]
    if suffix not in formats:
        raise ConfigError(f"--out {out}: batch predictions are written as Parquet or CSV; name "
                          f"the output file {' or '.join(formats)} (e.g. preds.parquet)")
    found = OutputFormat(suffix[1:])
    if fmt is not None and fmt is not found:
        raise ConfigError(f"--out {out} is a {suffix} file but --format is {fmt.value}; drop "
                          f"--format or name the output file .{fmt.value}")
    if not is_s3(out):
        folder = _local(out).resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".medops-probe-"):
                pass
        except OSError as exc:
            raise ConfigError(f"--out {out}: cannot write in {folder} ({exc.strerror or exc}); "
                              "choose a folder you can write to") from None
    return found


def batch_predict(predictor: Predictor, source: str, out: str,
                  fmt: OutputFormat | None = None, *, files: Files | None = None,
                  chunk_size: int = 256,
                  on_progress: Callable[[int, int], None] | None = None) -> BatchSummary:
    """Predict every image of ``source`` into ``out`` (Parquet or CSV; local or ``s3://``),
    skipping files an earlier run already predicted with the same model version."""
    started = time.perf_counter()
    files = files or Files()
    fmt = output_format(out, fmt)
    uris = list_inputs(source, files)
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
        merged = pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in predictor.columns})
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
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in predictor.columns})
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
        raise ConfigError(
            f"{out} already holds predictions of {found}, not {predictor.name} "
            f"v{predictor.version}; write to another --out or delete it to start over")
    rows["error"] = rows["error"].astype(object).where(rows["error"].notna(), None)
    return rows[predictor.columns]


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
