"""Artifact stores: one root (a folder, ``s3://bucket/prefix``) behind a few file operations.

Keys are ``/``-separated paths under the root (``datasets/<version>/manifest.parquet``), the
same layout on every backend. A backend is chosen by the URI's scheme from a small registry
(:func:`register_backend`, as MLflow's artifact repositories are); the S3 one
(:mod:`medops.storage.s3_artifacts`) imports boto3 only when a project names an ``s3://`` root.

:class:`ArtifactStore` is a template: its public methods check keys, spread tree transfers
over a thread pool and turn a backend's own exceptions into :class:`StoreError` (or
:class:`NotFoundError` for a missing key) naming the root; the ``_`` hooks do the work.
What a project uses day to day is :class:`medops.storage.artifact_sync.ArtifactSync`, which keeps
the pipeline on local paths and carries what other machines need to and from the store.
"""

from __future__ import annotations

import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import urlparse

from medops.errors import ConfigError, MedopsError, NotFoundError, StoreError
from medops.storage.locations import LOCAL_SCHEMES, local_path

#: Transfers at once in put_tree/fetch: artifact files are many and small (preprocessed
#: arrays of a few kB), so an object store's round trip, not bandwidth, is what limits them.
TRANSFER_WORKERS = 16
#: Where a project with a remote artifact root keeps its local working copy.
CACHE_FOLDER = ".medops/artifacts-cache"

T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    """One stored file: its key under the root, size in bytes, last change (POSIX seconds)."""

    key: str
    size: int
    modified: float


def check_key(key: str, *, prefix: bool = False) -> str:
    """``key`` as a clean relative key; a prefix may be empty (the whole root)."""
    text = key.replace("\\", "/").strip("/")
    parts = PurePosixPath(text).parts if text else ()
    if (not parts and not prefix) or any(p in ("..", ".") for p in parts) or "//" in text:
        raise StoreError(f"{key!r} is not a key under the artifact root: use a relative "
                         "path without '..', e.g. datasets/<version>/manifest.parquet")
    return "/".join(parts)


def visible(relative: str) -> bool:
    """False for work files: hidden names (``.last.pt.123.tmp``, a download in progress) and
    ``*.tmp`` (a Parquet file being written); they are never transferred."""
    return not relative.endswith(".tmp") and \
        not any(part.startswith(".") for part in relative.split("/"))


def local_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(key relative to ``folder``, path) of every visible file under ``folder``, sorted."""
    if folder.is_file():
        yield "", folder
        return
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in sorted(filenames):
            relative = (base / name).relative_to(folder).as_posix()
            if visible(relative):
                yield relative, base / name


class ArtifactStore(ABC):
    """Files under one root. Subclasses implement the ``_`` hooks."""

    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def url(self, key: str) -> str:
        """The full URI of ``key``."""
        return f"{self.uri}/{check_key(key)}"

    # -- the interface ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise a :class:`StoreError` saying what to fix when the root cannot be used (a
        missing bucket, refused credentials, an unreachable endpoint)."""
        self._call("check", "", self._check)

    def put_file(self, local: Path, key: str) -> None:
        """Store the file ``local`` as ``key`` (replacing what was there)."""
        key = check_key(key)
        if not Path(local).is_file():
            raise NotFoundError(f"cannot upload {local}: no such file")
        self._call("upload", key, lambda: self._put(Path(local), key))

    def get_file(self, key: str, local: Path) -> Path:
        """Download ``key`` to ``local``, atomically (a reader never sees half a file)."""
        key = check_key(key)
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            self._call("download", key, lambda: self._get(key, tmp))
            tmp.replace(local)
        finally:
            tmp.unlink(missing_ok=True)
        return local

    def read_bytes(self, key: str) -> bytes:
        key = check_key(key)
        return self._call("read", key, lambda: self._read(key))

    def exists(self, key: str) -> bool:
        """Whether ``key`` is a stored file."""
        key = check_key(key)
        return self._call("look up", key, lambda: self._exists(key))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """The files at ``prefix`` (a file's key) or under it (a folder), sorted by key."""
        prefix = check_key(prefix, prefix=True)
        return self._call("list", prefix, lambda: sorted(
            (o for o in self._list(prefix) if _under(o.key, prefix)), key=lambda o: o.key))

    def delete(self, keys: Iterable[str]) -> int:
        """Remove ``keys``; a key already gone is no error. How many were asked for."""
        clean = [check_key(k) for k in keys]
        if clean:
            self._call("delete", clean[0], lambda: self._delete(clean))
        return len(clean)

    def put_tree(self, files: Iterable[tuple[Path, str]]) -> int:
        """Upload (local path, key) pairs concurrently; how many."""
        jobs = [(Path(p), check_key(k)) for p, k in files]
        self._parallel(lambda job: self.put_file(job[0], job[1]), jobs)
        return len(jobs)

    def fetch(self, objects: Iterable[ObjectInfo], folder: Path) -> int:
        """Download ``objects`` concurrently to ``folder / key``, each file's modification
        time set to the object's, so a later comparison sees them as equal; how many."""
        jobs = list(objects)

        def one(obj: ObjectInfo) -> None:
            path = self.get_file(obj.key, Path(folder) / obj.key)
            os.utime(path, (obj.modified, obj.modified))

        self._parallel(one, jobs)
        return len(jobs)

    # -- the hooks ----------------------------------------------------------------------------

    @abstractmethod
    def _check(self) -> None: ...

    @abstractmethod
    def _put(self, local: Path, key: str) -> None: ...

    @abstractmethod
    def _get(self, key: str, local: Path) -> None:
        """Write ``key`` to ``local``; FileNotFoundError when there is no such key."""

    @abstractmethod
    def _list(self, prefix: str) -> Iterable[ObjectInfo]:
        """Objects whose key starts with ``prefix`` (a plain string prefix is enough)."""

    @abstractmethod
    def _delete(self, keys: Sequence[str]) -> None: ...

    def _read(self, key: str) -> bytes:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="medops-read-") as folder:
            tmp = Path(folder) / "object"
            self._get(key, tmp)
            return tmp.read_bytes()

    def _exists(self, key: str) -> bool:
        return any(o.key == key for o in self._list(key))

    def _error(self, exc: Exception, operation: str, key: str) -> MedopsError:
        """The backend's exception as a medops error; subclasses know their own."""
        if isinstance(exc, FileNotFoundError) and operation in ("download", "read"):
            return NotFoundError(f"{self.uri}/{key} does not exist")
        return StoreError(f"could not {operation} {self.uri}/{key}: {exc}")

    # -- helpers ------------------------------------------------------------------------------

    def _call(self, operation: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except MedopsError:
            raise
        except Exception as exc:
            raise self._error(exc, operation, key) from exc

    def _parallel(self, fn: Callable[[T], None], jobs: Sequence[T]) -> None:
        if len(jobs) <= 1:
            for job in jobs:
                fn(job)
            return
        with ThreadPoolExecutor(min(TRANSFER_WORKERS, len(jobs)),
                                thread_name_prefix="medops-artifacts") as pool:
            for _ in pool.map(fn, jobs):  # the first failure is raised, after the rest end
                pass


def _under(key: str, prefix: str) -> bool:
    return not prefix or key == prefix or key.startswith(prefix + "/")


class LocalArtifactStore(ArtifactStore):
    """A folder on this machine (or a mounted share)."""

    def __init__(self, root: Path) -> None:
        super().__init__(Path(root).as_uri())
        self.root = Path(root)

    def _check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def _put(self, local: Path, key: str) -> None:
        target = self.root / key
        if target.exists() and target.samefile(local):
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            shutil.copy2(local, tmp)
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)

    def _get(self, key: str, local: Path) -> None:
        shutil.copy2(self.root / key, local)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        start = self.root / prefix if prefix else self.root
        if not start.exists():
            return
        for relative, path in local_files(start):
            stat = path.stat()
            key = "/".join(p for p in (prefix, relative) if p)
            yield ObjectInfo(key, stat.st_size, stat.st_mtime)

    def _delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)


# -- the registry of backends -------------------------------------------------------------------

#: Builds a store from its URI and the project folder (against which relative paths resolve).
Backend = Callable[[str, Path], ArtifactStore]
_BACKENDS: dict[str, Backend] = {}


def register_backend(scheme: str, backend: Backend) -> None:
    """Make ``scheme://`` roots use ``backend`` (``""``: plain paths)."""
    _BACKENDS[scheme.lower()] = backend


def known_schemes() -> list[str]:
    return sorted(s for s in _BACKENDS if s)


def _scheme(uri: str) -> str:
    scheme = urlparse(uri).scheme.lower()
    return "" if len(scheme) == 1 else scheme  # a Windows drive letter, not a scheme


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names a root off this machine (anything but a path or file://)."""
    return _scheme(uri) not in LOCAL_SCHEMES


def open_artifact_store(uri: str, root: Path) -> ArtifactStore:
    """The store for ``uri`` (storage.artifacts); relative paths resolve against ``root``."""
    scheme = _scheme(uri)
    backend = _BACKENDS.get(scheme)
    if backend is None:
        raise ConfigError(
            f"storage.artifacts: no artifact store for the scheme {scheme!r} of {uri!r}; "
            f"known: a plain path, {', '.join(s + '://' for s in known_schemes())}")
    return backend(uri, root)


def working_folder(root: Path, uri: str) -> Path:
    """The local folder a project reads and writes artifacts in: the root itself when it is
    local, else a working copy under the project (:data:`CACHE_FOLDER`)."""
    if not is_remote(uri):
        return local_path(root, uri, key="storage.artifacts")
    if _scheme(uri) not in _BACKENDS:
        open_artifact_store(uri, root)  # raises the error that lists the known schemes
    return root / CACHE_FOLDER


def _local_backend(uri: str, root: Path) -> ArtifactStore:
    return LocalArtifactStore(local_path(root, uri, key="storage.artifacts"))


def _s3_backend(uri: str, root: Path) -> ArtifactStore:
    from medops.storage.s3_artifacts import S3ArtifactStore

    return S3ArtifactStore.from_environment(uri)


for _local_scheme in LOCAL_SCHEMES:
    register_backend(_local_scheme, _local_backend)
register_backend("s3", _s3_backend)
