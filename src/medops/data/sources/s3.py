"""An S3 (or MinIO) prefix as a remote source: new and changed objects by ETag.

The cursor. S3 lists keys in lexicographic order, never by time, and a "newest LastModified
seen" high-water mark would miss objects: a multipart upload's LastModified is when it *started*,
so one that completes after a later small upload appears behind the mark, and LastModified has
one-second resolution. So the cursor records what was seen: every key under the prefix with
its ETag, plus where the current listing pass stands (``after``). A poll resumes the listing
after ``after``, returns each object whose ETag differs from the recorded one (new or changed),
and records the ETags listed; keys of the listed range that no longer exist are forgotten, so
an object deleted and uploaded again comes back. When the listing reaches the end of the prefix,
``after`` goes back to the start and the next poll begins a new pass. The map is stored as
zlib-compressed JSON (about 32 bytes a key for UID-like names: 158 kB for 5,000
keys), opaque to the ingester.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from medops.config.sources import S3SourceConfig
from medops.data.sources.remote import PollResult, RemoteObject, pack_cursor, unpack_cursor
from medops.errors import ConfigError, DataError, DependencyMissingError

log = logging.getLogger(__name__)

_CURSOR_PREFIX = "s3v1:"
_ATTEMPTS = 3  # botocore's standard retry mode: exponential backoff with jitter between them
_AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "ExpiredToken",
               "InvalidToken", "AuthorizationHeaderMalformed", "403"}


class _VanishedError(Exception):
    """An object listed by a poll is gone by the time it is fetched."""


@dataclass
class _Cursor:
    after: str = ""  # relative key the current listing pass has reached ("": a new pass)
    etags: dict[str, str] = field(default_factory=dict)  # relative key -> ETag

    def encode(self) -> str:
        return pack_cursor(_CURSOR_PREFIX, {"after": self.after, "etags": self.etags},
                           sort_keys=True)

    @classmethod
    def decode(cls, text: str | None, where: str) -> _Cursor:
        if not text:
            return cls()
        return unpack_cursor(text, _CURSOR_PREFIX,
                             lambda d: cls(after=str(d["after"]), etags=dict(d["etags"])),
                             where, "an S3 cursor", "fix: reset the source's cursor to list "
                             "the prefix from the start")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix/"); the prefix is a folder."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ConfigError(f"{uri!r} is not an S3 URI; write it as s3://BUCKET/PREFIX/")
    bucket, _, prefix = uri[5:].partition("/")
    prefix = prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"  # "chest" must not also match "chest-old/..."
    return bucket, prefix


class S3Source:
    """Objects under ``s3://bucket/prefix/``; credentials come from boto3's usual chain
    (environment, shared config, instance role)."""

    def __init__(self, name: str, cfg: S3SourceConfig) -> None:
        self.name = name
        self.cfg = cfg
        self.bucket, self.prefix = parse_s3_uri(cfg.uri)
        self._where = f"data.sources.{name} ({cfg.uri}"
        self._where += f" at {cfg.endpoint_url})" if cfg.endpoint_url else ")"
        self._client = _make_client(cfg)

    # -- RemoteSource ---------------------------------------------------------------------
    def poll(self, cursor: str | None) -> PollResult:
        state = _Cursor.decode(cursor, self._where)
        known = sorted(state.etags)  # to find the recorded keys of each listed range quickly
        objects: list[RemoteObject] = []
        while True:
            page = self._list_page(state.after)
            contents = page.get("Contents", [])
            listed: dict[str, str] = {}
            for entry in contents:
                rel = entry["Key"][len(self.prefix):]
                if not rel or rel.endswith("/"):
                    continue  # a "folder" marker, not an object
                etag = str(entry["ETag"]).strip('"')
                listed[rel] = etag
                if state.etags.get(rel) != etag:
                    objects.append(self._object(entry["Key"], rel, etag, entry))
            truncated = bool(page.get("IsTruncated"))
            last = contents[-1]["Key"][len(self.prefix):] if contents else None
            # Keys in the listed range that were not listed are gone: forget them so that a
            # re-upload under the same key counts as new.
            lo = bisect.bisect_right(known, state.after)
            hi = bisect.bisect_right(known, last) if truncated and last else len(known)
            for rel in known[lo:hi]:
                if rel not in listed:
                    state.etags.pop(rel, None)
            state.etags.update(listed)
            if not truncated or last is None:
                state.after = ""
                return PollResult(objects, state.encode(), more=False)
            state.after = last
            if len(objects) >= self.cfg.max_keys:
                return PollResult(objects, state.encode(), more=True)

    def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
        """The object's bytes (the version ``meta["version_id"]`` names, if any); nothing
        when it was deleted after it was listed (the next pass forgets it)."""
        version = {"VersionId": obj.meta["version_id"]} if obj.meta.get("version_id") else {}
        try:
            body = self._call("get_object", Bucket=self.bucket, Key=obj.key, **version)
        except _VanishedError:
            log.info("%s: an object listed was deleted before it was fetched", self._where)
            return
        try:
            data = body["Body"].read()
        finally:
            body["Body"].close()
        yield obj.key.rsplit("/", 1)[-1], data

    def object_for(self, key: str, version: str,
                   meta: dict[str, Any] | None = None) -> RemoteObject | None:
        """The object at ``key`` (a full key) as a poll would return it; None when the key is
        not under the prefix or is a folder marker."""
        rel = key[len(self.prefix):]
        if not key.startswith(self.prefix) or not rel or rel.endswith("/"):
            return None
        parts = rel.split("/")
        label = parts[0] if self.cfg.labels_from_folders and len(parts) > 1 else None
        return RemoteObject(key=key, version=version, label=label,
                            meta={"uri": f"s3://{self.bucket}/{key}", **(meta or {})})

    # -- helpers ---------------------------------------------------------------------------
    def _object(self, key: str, rel: str, etag: str, entry: dict[str, Any]) -> RemoteObject:
        modified = entry.get("LastModified")
        obj = self.object_for(key, etag, {"size": entry.get("Size"), "last_modified":
                                          modified.isoformat() if modified else None})
        assert obj is not None  # poll skips folder markers and lists only under the prefix
        return obj

    def _list_page(self, after: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix,
                                  "MaxKeys": self.cfg.max_keys}
        if after:
            kwargs["StartAfter"] = self.prefix + after
        return self._call("list_objects_v2", **kwargs)

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One S3 call; botocore retries network errors and throttling with backoff, and what
        still fails becomes a medops error that names the source and the fix."""
        from botocore import exceptions as bex

        try:
            result: dict[str, Any] = getattr(self._client, operation)(**kwargs)
            return result
        except bex.NoCredentialsError as exc:
            raise ConfigError(f"{self._where}: no AWS credentials found; fix: set "
                              f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
                              ) from exc
        except (bex.EndpointConnectionError, bex.ConnectTimeoutError, bex.ReadTimeoutError,
                bex.ConnectionClosedError) as exc:
            raise DataError(f"{self._where}: cannot reach the S3 endpoint after {_ATTEMPTS} "
                            f"attempts ({type(exc).__name__}); fix: check endpoint_url and that "
                            f"the server is running") from exc
        except bex.ClientError as exc:
            raise self._client_error(exc, operation, kwargs.get("Key")) from exc

    def _client_error(self, exc: Any, operation: str, key: str | None) -> Exception:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return ConfigError(f"{self._where}: the bucket {self.bucket!r} does not exist; "
                               f"fix: create it or correct the uri")
        if code in _AUTH_CODES or status == 403:
            return ConfigError(f"{self._where}: S3 refused the credentials ({code or status}); "
                               f"fix: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
                               f"AWS_PROFILE) to credentials allowed to read the bucket")
        if code in {"NoSuchKey", "404"} and key is not None:
            return _VanishedError()
        return DataError(f"{self._where}: {operation} failed: {code or status} "
                         f"{err.get('Message', '')}".rstrip())


def _make_client(cfg: S3SourceConfig) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise DependencyMissingError("boto3", "aws", "the S3 source") from exc
    options: dict[str, Any] = {
        "retries": {"max_attempts": _ATTEMPTS, "mode": "standard"},
        "connect_timeout": 5, "read_timeout": 60,
    }
    if cfg.endpoint_url:
        options["s3"] = {"addressing_style": "path"}  # MinIO and local servers: no DNS buckets
    return boto3.session.Session().client(
        "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region or "us-east-1",
        config=Config(**options))
