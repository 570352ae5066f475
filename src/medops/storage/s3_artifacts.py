"""The ``s3://bucket/prefix`` artifact store, through boto3: AWS S3, MinIO or any S3 endpoint.

Nothing about reaching the bucket is in medops.yaml. The endpoint is boto3's own variable,
``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` (MinIO: ``http://minio:9000``; unset: AWS), and
the credentials come from boto3's chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``
(``AWS_SESSION_TOKEN``), ``AWS_PROFILE`` with ``~/.aws/credentials``, or the machine's role.
s3fs is not used: boto3 is already the ``aws`` extra, and these few calls need nothing more.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from medops.errors import (
    ConfigError,
    DependencyMissingError,
    MedopsError,
    NotFoundError,
    StoreError,
)
from medops.storage.artifacts import TRANSFER_WORKERS, ArtifactStore, ObjectInfo

#: boto3's variables for a non-AWS endpoint, most specific first (read by boto3 itself too).
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
#: Above this size a file goes up in parts, several at once (checkpoints of large networks).
_MULTIPART_FROM = 64 * 1024 * 1024
_CHUNK = 1024 * 1024
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
               "InvalidToken", "AuthorizationHeaderMalformed", "403"}
_CREDENTIALS_FIX = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with "
                    "~/.aws/credentials, in the environment of every medops process (never in "
                    "medops.yaml)")


def parse_root(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ("bucket", "some/prefix/"); ("bucket", "") at the top."""
    bucket, _, prefix = uri[len("s3://"):].partition("/") if uri.startswith("s3://") \
        else ("", "", "")
    if not bucket:
        raise ConfigError(f"storage.artifacts: {uri!r} names no bucket; write it as "
                          "s3://BUCKET/PREFIX, e.g. s3://medops-artifacts/chest-xray")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3ArtifactStore(ArtifactStore):
    """Objects under ``s3://bucket/prefix/``, one per file, keys as on disk."""

    def __init__(self, uri: str, client: Any, endpoint_url: str | None = None) -> None:
        super().__init__(uri)
        self.bucket, self.prefix = parse_root(uri)
        self.endpoint_url = endpoint_url
        self._client = client

    @classmethod
    def from_environment(cls, uri: str,
                         environ: Mapping[str, str] | None = None) -> S3ArtifactStore:
        """The store for ``uri`` with the endpoint of :data:`ENDPOINT_VARIABLES`."""
        env = os.environ if environ is None else environ
        parse_root(uri)  # a bad URI fails before boto3 is imported
        endpoint = next((env[v] for v in ENDPOINT_VARIABLES if env.get(v)), None)
        return cls(uri, _make_client(endpoint), endpoint)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _check(self) -> None:
        self._client.head_bucket(Bucket=self.bucket)

    def _put(self, local: Path, key: str) -> None:
        if local.stat().st_size < _MULTIPART_FROM:
            with local.open("rb") as body:
                self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body)
        else:
            self._client.upload_file(str(local), self.bucket, self._key(key))

    def _get(self, key: str, local: Path) -> None:
        body = self._object_body(key)  # before the file: a missing key leaves no empty file
        with local.open("wb") as out:
            shutil.copyfileobj(body, out, _CHUNK)

    def _read(self, key: str) -> bytes:
        return bytes(self._object_body(key).read())

    def _object_body(self, key: str) -> Any:
        """The streaming body of object ``key``; FileNotFoundError when there is none."""
        from botocore.exceptions import ClientError

        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from exc
            raise

    def _exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._key(prefix))
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectInfo(str(obj["Key"])[len(self.prefix):], int(obj["Size"]),
                                 obj["LastModified"].timestamp())

    def _delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # S3's limit per request
            answer = self._client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(k)} for k in keys[start:start + 1000]],
                "Quiet": True})
            failed = answer.get("Errors") or []
            if failed:
                first = failed[0]
                raise StoreError(f"S3 kept {len(failed)} object(s) of {self.uri} it was asked "
                                 f"to delete, e.g. {first.get('Key')}: {first.get('Code')} "
                                 f"{first.get('Message', '')}".rstrip())

    def _error(self, exc: Exception, operation: str, key: str) -> MedopsError:
        from botocore.exceptions import (
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = f"{self.uri}/{key}" if key else self.uri
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(f"no AWS credentials to reach {self.uri} (storage.artifacts); "
                              f"fix: {_CREDENTIALS_FIX}")
        if isinstance(exc, (EndpointConnectionError, ConnectTimeoutError)):
            endpoint = self.endpoint_url or "AWS's"
            return StoreError(f"cannot reach the S3 endpoint {endpoint} for {self.uri}: {exc}; "
                              "fix: check AWS_ENDPOINT_URL (MinIO: http://HOST:9000) and that "
                              "the server is running")
        if not isinstance(exc, ClientError):
            return super()._error(exc, operation, key)
        code = _code(exc)
        if code == "NoSuchBucket" or (operation == "check" and code in ("404", "NotFound")):
            return StoreError(f"the bucket {self.bucket!r} of storage.artifacts ({self.uri}) "
                              f"does not exist; fix: create it (aws s3 mb s3://{self.bucket}, "
                              "or mc mb for MinIO) or correct storage.artifacts in medops.yaml")
        if code in ("NoSuchKey", "404") and operation in ("download", "read"):
            return NotFoundError(f"{where} does not exist")
        if code in _AUTH_CODES:
            return StoreError(f"S3 refused access to {where} ({code}); fix: {_CREDENTIALS_FIX}, "
                              "with rights to read, write and list the bucket")
        message = exc.response.get("Error", {}).get("Message", "")
        return StoreError(f"S3 could not {operation} {where}: {code} {message}".rstrip())


def _code(exc: Any) -> str:
    response = getattr(exc, "response", {}) or {}
    code = response.get("Error", {}).get("Code")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(code or status or "")


def _make_client(endpoint_url: str | None) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise DependencyMissingError("boto3", "aws", "an s3:// artifact root") from exc
    options: dict[str, Any] = {
        "retries": {"max_attempts": 5, "mode": "standard"},  # backoff with jitter
        "connect_timeout": 5, "read_timeout": 60,
        "max_pool_connections": TRANSFER_WORKERS + 4,  # the transfer pool and a few callers
    }
    if endpoint_url:
        options["s3"] = {"addressing_style": "path"}  # MinIO and local servers: no DNS buckets
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=endpoint_url,
                          region_name=session.region_name or "us-east-1", config=Config(**options))
