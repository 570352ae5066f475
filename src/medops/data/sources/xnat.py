"""XNAT as a remote source, through the ``xnat`` package (xnatpy).

XNAT keeps images as project -> subject -> experiment (session) -> scan -> resource -> files and
has no change feed, so a poll walks the project and returns the scans it has not seen, or whose
DICOM resource changed (file count or size); the cursor is the map of what was seen (compressed
JSON, opaque to the ingester). :func:`list_subjects` lists a project's subjects (id, label,
URI) for training code, and :mod:`medops.train.xnat_monai` has the MONAI dictionary
transform that downloads the scan a user's action function picks.

Credentials come from the environment variables the config names (``user_env``,
``password_env``), never from the config file itself; without them the connection is
anonymous (guest).
"""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from medops.config.sources import XnatSourceConfig
from medops.data.sources.remote import PollResult, RemoteObject, pack_cursor, unpack_cursor
from medops.errors import ConfigError, DataError, DependencyMissingError, MedopsError

log = logging.getLogger(__name__)
# xnatpy logs every URI it requests at debug level, and URIs can carry subject labels: its
# messages go to a child logger that passes warnings and errors only.
_client_log = logging.getLogger(f"{__name__}.client")
_client_log.setLevel(logging.WARNING)

_CURSOR_PREFIX = "xnatv1:"
#: Resource labels that hold a scan's DICOM files, in order of preference.
DICOM_RESOURCES = ("DICOM", "secondary")


@dataclass(frozen=True)
class XnatSubjectRef:
    """One subject of a project: its accession id, its label in the project, its REST URI."""

    id: str
    label: str
    uri: str


def connect(cfg: XnatSourceConfig) -> Any:
    """An ``xnat`` session for ``cfg`` (close it with ``.disconnect()``)."""
    try:
        import xnat
        from xnat import exceptions as xexc
    except ImportError as exc:
        raise DependencyMissingError("xnat", "xnat", "the XNAT source") from exc
    user = _env(cfg.user_env, "user_env")
    password = _env(cfg.password_env, "password_env")
    if user is not None and password is None:
        # xnat.connect would prompt on the console for it.
        raise ConfigError(f"XNAT at {cfg.url}: a user but no password; fix: set password_env "
                          "to the variable holding the password")
    try:
        return xnat.connect(cfg.url, user=user, password=password, logger=_client_log,
                            default_timeout=60.0, pilot_timeout=15.0)
    except (xexc.XNATLoginFailedError, xexc.XNATAuthError) as exc:
        raise ConfigError(f"XNAT at {cfg.url} refused the login ({type(exc).__name__}); fix: "
                          f"check the credentials in {cfg.user_env}/{cfg.password_env}") from exc
    except Exception as exc:  # requests and xnat raise many types for an unreachable server
        raise DataError(f"XNAT at {cfg.url} cannot be reached or answered something unexpected "
                        f"({type(exc).__name__}); fix: check the url and that it is up") from exc


def list_subjects(session: Any, project: str) -> list[XnatSubjectRef]:
    """The subjects of ``project`` with their id, label and URI."""
    proj = _project(session, project)
    return [XnatSubjectRef(id=str(s.id), label=str(s.label), uri=str(s.uri))
            for s in proj.subjects.listing]


def scan_key(scan: Any) -> tuple[str, str, str, str]:
    """(project, subject id, experiment id, scan id) of an ``xnat`` scan object."""
    experiment = scan.parent
    return (str(experiment.project), str(experiment.subject_id), str(experiment.id),
            str(scan.id))


def dicom_resource(scan: Any) -> Any:
    """The scan's resource holding its DICOM files; DataError when it has none."""
    resources = scan.resources
    for label in DICOM_RESOURCES:
        if label in resources:
            return resources[label]
    raise DataError(f"XNAT scan {'/'.join(scan_key(scan))} has no DICOM resource (it has "
                    f"{sorted(str(r.label) for r in resources.listing)})")


def download_scan(scan: Any) -> Iterator[tuple[str, bytes]]:
    """The DICOM files of ``scan`` as (file name, bytes), one file at a time."""
    resource = dicom_resource(scan)
    for f in resource.files.listing:
        buffer = io.BytesIO()
        f.download_stream(buffer, verbose=False)
        yield PurePosixPath(str(f.id)).name, buffer.getvalue()


class XnatSource:
    """The scans of one XNAT project (see the module docstring)."""

    def __init__(self, name: str, cfg: XnatSourceConfig) -> None:
        self.name = name
        self.cfg = cfg
        self._where = f"data.sources.{name} (XNAT {cfg.url}, project {cfg.project})"
        try:
            self._scan_type = re.compile(cfg.scan_type) if cfg.scan_type else None
        except re.error as exc:
            raise ConfigError(f"data.sources.{name}.scan_type {cfg.scan_type!r} is not a "
                              f"regular expression ({exc})") from exc
        self._session: Any = None
        self._scans: dict[str, Any] = {}  # key -> xnat scan, from the last poll

    def close(self) -> None:
        if self._session is not None:
            self._session.disconnect()
            self._session = None

    # -- RemoteSource ---------------------------------------------------------------------
    def poll(self, cursor: str | None) -> PollResult:
        seen = _decode(cursor, self._where)
        session = self._connected()
        session.clearcache()  # xnatpy caches listings; a poll must see the server as it is now
        objects: list[RemoteObject] = []
        listed: dict[str, str] = {}
        try:
            for subject in _project(session, self.cfg.project).subjects.listing:
                label = self._label(subject)
                for experiment in subject.experiments.listing:
                    for scan in experiment.scans.listing:
                        if self._scan_type and not self._scan_type.search(str(scan.type or "")):
                            continue
                        key = "/".join((self.cfg.project, str(subject.id), str(experiment.id),
                                        str(scan.id)))
                        version = self._version(scan)
                        if version is None:
                            continue  # no DICOM resource (yet): looked at again next poll
                        listed[key] = version
                        self._scans[key] = scan
                        if seen.get(key) != version:
                            objects.append(RemoteObject(
                                key=key, version=version, label=label,
                                meta={"uri": f"{self.cfg.url.rstrip('/')}{scan.uri}",
                                      "subject": str(subject.id),
                                      "experiment": str(experiment.id),
                                      "scan_type": str(scan.type or "")}))
        except MedopsError:
            raise
        except Exception as exc:
            raise DataError(f"{self._where}: listing failed ({type(exc).__name__}: {exc})"
                            ) from exc
        return PollResult(objects, _encode(listed))

    def fetch(self, obj: RemoteObject) -> Iterator[tuple[str, bytes]]:
        scan = self._scans.get(obj.key)
        if scan is None:
            project, subject, experiment, scan_id = obj.key.split("/")
            scan = self._connected().create_object(
                f"/data/projects/{project}/subjects/{subject}/experiments/{experiment}"
                f"/scans/{scan_id}")
        try:
            yield from download_scan(scan)
        except MedopsError:
            raise
        except Exception as exc:
            raise DataError(f"{self._where}: download of scan {obj.key} failed "
                            f"({type(exc).__name__}: {exc})") from exc

    # -- helpers ---------------------------------------------------------------------------
    def _connected(self) -> Any:
        if self._session is None:
            self._session = connect(self.cfg)
        return self._session

    def _version(self, scan: Any) -> str | None:
        """The DICOM resource's file count and size: what changes when files are added."""
        for resource in scan.resources.listing:
            if str(resource.label) in DICOM_RESOURCES:
                data = resource.data
                return f"{data.get('file_count', '')}:{data.get('file_size', '')}"
        return None

    def _label(self, subject: Any) -> str | None:
        if not self.cfg.label_field:
            return None
        value = subject.fields.get(self.cfg.label_field)
        return str(value) if value not in (None, "") else None


def _project(session: Any, project: str) -> Any:
    projects = session.projects
    if project not in projects:
        raise ConfigError(f"XNAT has no project {project!r} visible to this user; fix: correct "
                          "the project id or the credentials")
    return projects[project]


def _env(name: str | None, key: str) -> str | None:
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"XNAT {key}: the environment variable {name} is not set")
    return value


def _encode(seen: dict[str, str]) -> str:
    return pack_cursor(_CURSOR_PREFIX, seen, sort_keys=True)


def _decode(cursor: str | None, where: str) -> dict[str, str]:
    if not cursor:
        return {}
    return unpack_cursor(cursor, _CURSOR_PREFIX, lambda d: {str(k): str(v) for k, v in d.items()},
                         where, "an XNAT cursor", "fix: reset the source's cursor")
