"""Where batches read and write: local paths and ``s3://`` URIs behind a few operations.

Tables are written whole (an S3 PUT, a local write then rename): a reader, or a run that
resumes, never sees half a file.
"""

from __future__ import annotations

import io
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from medops.config.enums import StrEnum
from medops.data.sources.folder import visible_files
from medops.errors import ConfigError, DependencyMissingError
from medops.serve.outputs import FINDINGS

#: Columns read from CSV as text (pandas would turn a version "1" into an integer).
_TEXT_COLUMNS = ("uri", "label", FINDINGS, "model", "version", "error")


class OutputFormat(StrEnum):
    PARQUET = "parquet"
    CSV = "csv"


class Files:
    """Local paths and ``s3://`` URIs (through boto3) behind the few operations batches need."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        self._endpoint_url = endpoint_url
        self._client: Any = None

    @property
    def endpoint_url(self) -> str | None:
        """The S3 endpoint given (None: boto3's own, e.g. from ``AWS_ENDPOINT_URL``)."""
        return self._endpoint_url

    def _s3(self) -> Any:
        if self._client is None:
            try:
                import boto3
            except ModuleNotFoundError as exc:
                raise DependencyMissingError("boto3", "aws", "s3:// inputs and outputs") from exc
            self._client = boto3.client("s3", endpoint_url=self._endpoint_url)
        return self._client

    def _keys(self, uri: str) -> list[str]:
        bucket, prefix = split_s3(uri)
        pages = self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                    Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]

    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            return bytes(self._s3().get_object(Bucket=bucket, Key=key)["Body"].read())
        return local_path(uri).read_bytes()

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            _, key = split_s3(uri)
            return any(k == key or k.startswith(key.rstrip("/") + "/") for k in self._keys(uri))
        return local_path(uri).exists()

    def is_dir(self, uri: str) -> bool:
        if is_s3(uri):
            return bool(self._keys(uri.rstrip("/") + "/"))
        return local_path(uri).is_dir()

    def list_dir(self, uri: str) -> list[str]:
        """The files directly in a folder or under a prefix (not in sub-folders), sorted;
        none when it does not exist."""
        if is_s3(uri):
            bucket, prefix = split_s3(uri.rstrip("/") + "/")
            return sorted(f"s3://{bucket}/{key}" for key in self._keys(f"s3://{bucket}/{prefix}")
                          if "/" not in key[len(prefix):])
        folder = local_path(uri)
        return sorted(str(p) for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []

    def check_bucket(self, uri: str) -> None:
        """ConfigError naming the bucket of ``uri`` and the fix when it cannot be reached:
        checked before a batch starts, so a wrong --out costs no predictions."""
        bucket, _ = split_s3(uri)
        try:
            self._s3().head_bucket(Bucket=bucket)
        except DependencyMissingError:
            raise
        except Exception as exc:
            raise ConfigError(f"--out {uri}: cannot reach the bucket {bucket!r} "
                              f"({error_reason(exc)}); create it or {access_fix(uri)}") from exc

    def remove(self, uri: str) -> None:
        """Delete one file or object; one that is already gone is no error."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._s3().delete_object(Bucket=bucket, Key=key)
        else:
            local_path(uri).unlink(missing_ok=True)

    def find(self, uri: str) -> list[str]:
        """Every file under a folder or prefix, recursively, as URIs like ``uri``; hidden files
        and folders (a name starting with '.') are left out."""
        if is_s3(uri):
            bucket, prefix = split_s3(uri.rstrip("/") + "/")
            return sorted(f"s3://{bucket}/{key}" for key in self._keys(uri.rstrip("/") + "/")
                          if not any(part.startswith(".")
                                     for part in key[len(prefix):].split("/")))
        return [str(p) for p in visible_files(local_path(uri).resolve())]

    def read_table(self, uri: str, fmt: OutputFormat = OutputFormat.PARQUET,
                   columns: Sequence[str] | None = None) -> pd.DataFrame:
        source: Any = io.BytesIO(self.read_bytes(uri)) if is_s3(uri) else local_path(uri)
        if fmt is OutputFormat.CSV:
            return pd.read_csv(source, dtype={c: str for c in _TEXT_COLUMNS}, usecols=columns)
        return pd.read_parquet(source, columns=list(columns) if columns else None)

    def write_table(self, frame: pd.DataFrame, uri: str, fmt: OutputFormat,
                    schema: Any = None) -> None:
        """Write ``frame`` whole (readers never see half of it); ``schema``: the pyarrow
        schema of a Parquet file, when its columns' types must not be inferred."""
        buf = io.BytesIO()
        if fmt is OutputFormat.CSV:
            buf.write(frame.to_csv(index=False).encode())
        else:
            frame.to_parquet(buf, index=False, schema=schema)
        if is_s3(uri):  # a PUT is atomic: readers never see half an object
            bucket, key = split_s3(uri)
            self._s3().put_object(Bucket=bucket, Key=key, Body=buf.getvalue())
            return
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)  # readers never see half a file

    def remove_tree(self, uri: str) -> None:
        if is_s3(uri):
            bucket, _ = split_s3(uri)
            keys = self._keys(uri.rstrip("/") + "/")
            for start in range(0, len(keys), 1000):  # DeleteObjects takes 1000 keys at most
                chunk = [{"Key": k} for k in keys[start:start + 1000]]
                self._s3().delete_objects(Bucket=bucket, Delete={"Objects": chunk})
        else:
            shutil.rmtree(local_path(uri), ignore_errors=True)


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://"):].partition("/")
    return bucket, key


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def error_reason(exc: Exception) -> str:
    """``Type: message``: botocore's messages already name the S3 error code."""
    return f"{type(exc).__name__}: {exc}"


def access_fix(uri: str) -> str:
    """What to check when ``uri`` cannot be read or written."""
    if is_s3(uri):
        return ("check the bucket and prefix, the S3 endpoint (--endpoint-url or "
                "AWS_ENDPOINT_URL) and the credentials (AWS_ACCESS_KEY_ID or AWS_PROFILE)")
    return "check that the path exists and that this user may read it"
