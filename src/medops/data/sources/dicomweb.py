"""A PACS over DICOMweb as a remote source (QIDO-RS search, WADO-RS retrieve).

Two cursors, one per way of finding what is new:

- ``orthanc_changes: true`` reads Orthanc's ``/changes`` feed: every instance Orthanc stores gets
  a ``NewInstance`` change with a growing sequence number, so the cursor is the last sequence
  number read (``orthanc:<Seq>``) and a poll costs one request per new instance, however large
  the archive. Instances are fetched as the stored Part-10 file (``/instances/{id}/file``).
- Otherwise the cursor is portable to any DICOMweb server: QIDO-RS cannot search "by arrival",
  so each pass pages through the instances that match the filters, and the cursor records a
  64-bit hash of every SOPInstanceUID already returned (a set: a SOP instance never changes
  under its UID) plus the offset the current pass has reached. A pass over a large archive is
  as slow as the search; narrow it with filters (a StudyDate range) or use the Orthanc feed.
  Instances are fetched with WADO-RS in their stored transfer syntax.

Both cursors are opaque to the ingester and stored only once the objects of a poll are in.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any, TypeVar

from medops.config.sources import DicomwebSourceConfig
from medops.data.sources.dicom_filters import (
    check_keyword,
    first_value,
    json_value,
    matches,
    tag_hex,
)
from medops.data.sources.remote import PollResult, RemoteObject, pack_cursor, unpack_cursor
from medops.errors import ConfigError, DataError, DependencyMissingError

T = TypeVar("T")
log = logging.getLogger(__name__)

_ATTEMPTS = 3  # a request is tried this many times, with exponential backoff between them
_BACKOFF_S = 0.3
_QIDO_PREFIX = "qido:"
_ORTHANC_PREFIX = "orthanc:"
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class DicomwebSource:
    """Instances of a DICOMweb server that match ``filters``, as they arrive."""

    def __init__(self, name: str, cfg: DicomwebSourceConfig) -> None:
        self.name = name
        self.cfg = cfg
        self._where = f"data.sources.{name} ({cfg.url})"
        for key in cfg.filters:
            check_keyword(key, f"data.sources.{name}.filters")
        if cfg.label_tag:
            check_keyword(cfg.label_tag, f"data.sources.{name}.label_tag")
        self.orthanc_url = _orthanc_root(name, cfg) if cfg.orthanc_changes else None
        self._session = _make_session(name, cfg)
        self._client: Any = None  # the DICOMweb client, built on first use

    # -- RemoteSource ---------------------------------------------------------------------
    def poll(self, cursor: str | None) -> PollResult:
        if self.cfg.orthanc_changes:
            return self._poll_changes(cursor)
        return self._poll_qido(cursor)

    def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
        name = f"{obj.key}.dcm"
        orthanc_id = obj.meta.get("orthanc_id")
        if self.orthanc_url and orthanc_id:
            data = self._get(f"{self.orthanc_url}/instances/{orthanc_id}/file",
                             parse=lambda r: r.content, missing_ok=True)
        else:
            data = self._retrieve(obj)
        if data is None:
            log.info("%s: an instance listed was deleted before it was fetched", self._where)
            return
        yield name, data

    # -- Orthanc's change feed ------------------------------------------------------------
    def _poll_changes(self, cursor: str | None) -> PollResult:
        since = _decode_orthanc(cursor, self._where)
        feed = self._get(f"{self.orthanc_url}/changes",
                         params={"since": since, "limit": self.cfg.page_size}) or {}
        objects: list[RemoteObject] = []
        for change in feed.get("Changes", []):
            if change.get("ChangeType") != "NewInstance":
                continue
            obj = self._changed_instance(str(change["ID"]), int(change["Seq"]))
            if obj is not None:
                objects.append(obj)
        last = int(feed.get("Last", since))
        return PollResult(objects, f"{_ORTHANC_PREFIX}{max(last, since)}",
                          more=not feed.get("Done", True))

    def _changed_instance(self, orthanc_id: str, seq: int) -> RemoteObject | None:
        tags = self._get(f"{self.orthanc_url}/instances/{orthanc_id}/tags",
                         params={"simplify": ""}, missing_ok=True)
        if tags is None:
            return None  # deleted since it arrived: nothing to ingest
        if not matches(tags, self.cfg.filters, first_value):
            return None
        uids = {k: str(tags.get(k, "")) for k in _UIDS}
        label = first_value(tags, self.cfg.label_tag) if self.cfg.label_tag else None
        return RemoteObject(key=uids["SOPInstanceUID"], version=str(seq), label=label or None,
                            meta={"orthanc_id": orthanc_id, "study_uid": uids["StudyInstanceUID"],
                                  "series_uid": uids["SeriesInstanceUID"]})

    # -- QIDO-RS ----------------------------------------------------------------------------
    def _poll_qido(self, cursor: str | None) -> PollResult:
        offset, seen = _decode_qido(cursor, self._where)
        fields = [self.cfg.label_tag] if self.cfg.label_tag else None
        client = self._dicomweb()
        found: list[dict[str, Any]] = self._guard(lambda: client.search_for_instances(
            search_filters=dict(self.cfg.filters), fields=fields, offset=offset,
            limit=self.cfg.page_size, get_remaining=False))
        objects: list[RemoteObject] = []
        for entry in found:
            uids = {k: json_value(entry, tag_hex(k)) or "" for k in _UIDS}
            digest = _uid_hash(uids["SOPInstanceUID"])
            if digest in seen:
                continue
            seen.add(digest)
            label = json_value(entry, tag_hex(self.cfg.label_tag)) if self.cfg.label_tag else None
            objects.append(RemoteObject(key=uids["SOPInstanceUID"], version="1",
                                        label=label or None,
                                        meta={"study_uid": uids["StudyInstanceUID"],
                                              "series_uid": uids["SeriesInstanceUID"]}))
        more = len(found) >= self.cfg.page_size
        next_offset = offset + len(found) if more else 0  # 0: the next poll starts a new pass
        return PollResult(objects, _encode_qido(next_offset, seen), more=more)

    def _retrieve(self, obj: RemoteObject) -> bytes | None:
        """WADO-RS retrieve as Part-10 bytes; None when the server no longer has it."""
        import requests
        from pydicom import dcmwrite

        client = self._dicomweb()

        def call() -> Any:
            try:
                # "*": the stored transfer syntax, not a transcoding the server might choose.
                return client.retrieve_instance(obj.meta["study_uid"], obj.meta["series_uid"],
                                                obj.key, media_types=(("application/dicom", "*"),))
            except requests.exceptions.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return None
                raise

        dataset = self._guard(call)
        if dataset is None:
            return None
        buffer = BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True)
        return buffer.getvalue()

    # -- HTTP ---------------------------------------------------------------------------------
    def _dicomweb(self) -> Any:
        if self._client is None:
            from dicomweb_client.api import DICOMwebClient

            self._client = DICOMwebClient(url=self.cfg.url.rstrip("/"), session=self._session)
            # Retries happen below the client, in the session's adapter, for every request.
            self._client.set_http_retry_params(retry=False)
        return self._client

    def _get(self, url: str, params: dict[str, Any] | None = None,
             parse: Callable[[Any], Any] = lambda r: r.json(), missing_ok: bool = False) -> Any:
        """GET on the server's own REST API, parsed (JSON by default); None for a 404 when
        ``missing_ok``."""
        def call() -> Any:
            response = self._session.get(url, params=params)
            if missing_ok and response.status_code == 404:
                return None
            response.raise_for_status()
            return parse(response)

        return self._guard(call)

    def _guard(self, call: Callable[[], T]) -> T:
        """Run one request; what still fails after the retries becomes a medops error."""
        import requests

        try:
            return call()
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                fix = (f"set the environment variable {self.cfg.token_env} to a valid token"
                       if self.cfg.token_env else
                       f"set data.sources.{self.name}.token_env to the variable holding a token")
                raise ConfigError(f"{self._where}: the server refused access (HTTP {status}); "
                                  f"fix: {fix}") from exc
            raise DataError(f"{self._where}: the server answered HTTP {status} to "
                            f"{_path(exc)}; check the url and filters") from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                requests.exceptions.RetryError) as exc:
            raise DataError(f"{self._where}: the server cannot be reached after {_ATTEMPTS} "
                            f"attempts ({type(exc).__name__}); nothing past the last stored "
                            f"cursor was taken; fix: check that it is running and the url"
                            ) from exc
        except ValueError as exc:  # a body that is not the JSON / DICOM it should be
            raise DataError(f"{self._where}: the server sent an unreadable answer ({exc})"
                            ) from exc


def _path(exc: Any) -> str:
    request = getattr(exc, "request", None)
    url = str(getattr(request, "url", "") or "")
    return url.split("?", 1)[0] or "a request"  # query strings can carry patient filters


def _orthanc_root(name: str, cfg: DicomwebSourceConfig) -> str:
    if cfg.orthanc_url:
        return cfg.orthanc_url.rstrip("/")
    url = cfg.url.rstrip("/")
    if not url.endswith("/dicom-web"):
        raise ConfigError(f"data.sources.{name}.orthanc_url is needed: the DICOMweb url {url!r} "
                          f"does not end in /dicom-web, so Orthanc's REST root is unknown; "
                          f"fix: set orthanc_url, e.g. http://pacs:8042")
    return url[: -len("/dicom-web")]


def _make_session(name: str, cfg: DicomwebSourceConfig) -> Any:
    try:
        import dicomweb_client  # noqa: F401
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry
    except ImportError as exc:
        raise DependencyMissingError("dicomweb-client", "dicom-net", "the DICOMweb source"
                                     ) from exc

    class _Adapter(HTTPAdapter):
        """Retries with backoff, and a timeout on every request (requests has none)."""

        def send(self, request: Any, stream: bool = False, timeout: Any = None,
                 verify: Any = True, cert: Any = None, proxies: Any = None) -> Any:
            return super().send(request, stream=stream, timeout=timeout or cfg.timeout_s,
                                verify=verify, cert=cert, proxies=proxies)

    retry = Retry(total=_ATTEMPTS - 1, backoff_factor=_BACKOFF_S,
                  status_forcelist=(408, 429, 502, 503, 504), allowed_methods=frozenset({"GET"}),
                  raise_on_status=False)
    session = requests.Session()
    adapter = _Adapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if cfg.token_env:
        token = os.environ.get(cfg.token_env)
        if not token:
            raise ConfigError(f"data.sources.{name}.token_env: the environment variable "
                              f"{cfg.token_env} is not set; fix: export it with the bearer token")
        session.headers["Authorization"] = f"Bearer {token}"
    return session


# -- cursors ----------------------------------------------------------------------------------
def _decode_orthanc(cursor: str | None, where: str) -> int:
    if not cursor:
        return 0
    if cursor.startswith(_ORTHANC_PREFIX) and cursor[len(_ORTHANC_PREFIX):].isdigit():
        return int(cursor[len(_ORTHANC_PREFIX):])
    raise DataError(f"{where}: the stored cursor is not an Orthanc change number (was "
                    f"orthanc_changes switched on?); fix: reset the source's cursor")


def _uid_hash(uid: str) -> str:
    # 64 bits: odds of a collision among ten million UIDs are below 1e-5; no UID is stored.
    return hashlib.sha256(uid.encode()).hexdigest()[:16]


def _encode_qido(offset: int, seen: set[str]) -> str:
    return pack_cursor(_QIDO_PREFIX, {"offset": offset, "seen": sorted(seen)})


def _decode_qido(cursor: str | None, where: str) -> tuple[int, set[str]]:
    if not cursor:
        return 0, set()
    return unpack_cursor(cursor, _QIDO_PREFIX, lambda d: (int(d["offset"]), set(d["seen"])),
                         where, "a QIDO-RS cursor (was orthanc_changes switched off?)",
                         "fix: reset the source's cursor to search from the start")
