"""Durable files for received instances: written, fsynced, renamed, directory fsynced.

An instance lands at ``<storage>/<study hash>/<series hash>/<SOP hash>.dcm``; names are hashes of
the UIDs so that no identifier appears in a path. It is first written to a temporary name in the
same folder, so a crash leaves either the whole file under its final name or a ``.tmp`` file that
the next start removes, never a half-written instance under a real name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SUFFIX = ".dcm"
_TMP_SUFFIX = ".tmp"


def uid_hash(uid: str) -> str:
    """A stable stand-in for a DICOM UID in paths, logs and the index (not reversible)."""
    return hashlib.sha256(uid.strip().encode()).hexdigest()[:32]


@dataclass(frozen=True)
class InstanceKey:
    """Where one instance belongs, as hashes of its study, series and SOP instance UIDs."""

    study_hash: str
    series_hash: str
    sop_hash: str

    @classmethod
    def from_uids(cls, study_uid: str, series_uid: str, sop_uid: str) -> InstanceKey:
        return cls(uid_hash(study_uid), uid_hash(series_uid), uid_hash(sop_uid))

    @property
    def relpath(self) -> str:
        return f"{self.study_hash}/{self.series_hash}/{self.sop_hash}{_SUFFIX}"


class InstanceStore:
    """The receiver's storage folder."""

    def __init__(self, root: Path, min_free_mb: int) -> None:
        self.root = root
        self.min_free_bytes = min_free_mb * 1024 * 1024
        root.mkdir(parents=True, exist_ok=True)

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    def has_room_for(self, size: int) -> bool:
        """Whether ``size`` more bytes keep the free space at or above the watermark."""
        return shutil.disk_usage(self.root).free - size >= self.min_free_bytes

    def write(self, key: InstanceKey, data: bytes) -> str:
        """Store ``data`` durably under ``key``; returns the relative path. On failure
        (OSError) nothing is left behind under the final name or a temporary one."""
        final = self.root / key.relpath
        _makedirs_durably(final.parent, self.root)
        tmp = final.with_name(f".{key.sop_hash}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            tmp.replace(final)
            _fsync_dir(final.parent)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise
        return key.relpath

    def remove(self, relpath: str) -> None:
        """Take back a stored file (its index entry could not be written)."""
        path = self.root / relpath
        try:
            path.unlink(missing_ok=True)
            _fsync_dir(path.parent)
        except OSError as exc:
            log.warning("could not remove %s after a failed index write: %s", relpath,
                        exc.strerror)

    def purge(self, relpath: str) -> None:
        """Delete an ingested instance (its folders stay: a late instance of the series may be
        being written into them; :meth:`remove_empty_folders` runs at startup)."""
        path = self.root / relpath
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def stored(self) -> Iterator[str]:
        """Relative paths of every stored instance (for the startup scan)."""
        for study in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for series in sorted(p for p in study.iterdir() if p.is_dir()):
                for f in sorted(series.glob(f"*{_SUFFIX}")):
                    yield f.relative_to(self.root).as_posix()

    def remove_empty_folders(self) -> None:
        """Series and study folders left empty by purges (before anything is received)."""
        for series in self.root.glob("*/*/"):
            if not any(series.iterdir()):
                series.rmdir()
        for study in self.root.glob("*/"):
            if not any(study.iterdir()):
                study.rmdir()

    def remove_temporaries(self) -> int:
        """Delete ``.tmp`` files left by a crash mid-write (never acknowledged to anyone)."""
        count = 0
        for tmp in self.root.glob(f"*/*/.*{_TMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count


def _makedirs_durably(folder: Path, root: Path) -> None:
    """Create ``folder`` (under ``root``) and fsync the parent of every folder created, so
    the new directory entries survive a power loss along with the file."""
    missing: list[Path] = []
    current = folder
    while not current.exists() and current != root:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
