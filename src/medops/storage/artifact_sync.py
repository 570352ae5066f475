"""A project's artifacts: local paths for the code, an object store for the team.

The pipeline, ``medops serve`` and ``medops monitor`` read and write plain files under
``Project.artifacts``. When ``storage.artifacts`` is local, that folder *is* the root and
:class:`ArtifactSync` does nothing. When it is remote (``s3://bucket/prefix``), the folder is a
working copy (``.medops/artifacts-cache``), and the code that makes or needs a shared file says
so in one line:

* ``publish(path)`` uploads a file or folder (only what changed since this process last
  uploaded it or what the store lacks), a folder's most recently written file last: an index
  written after the files it names (a checkpoint's ``last.pt``) never reaches the store before
  them. A folder that changes during the upload is gone over again. ``publish_soon`` does it
  in the background (a checkpoint every epoch).
* ``ensure_local(path)`` downloads what the store has and the working copy lacks, or holds in an
  older version. ``immutable=True`` (manifests, preprocessed arrays: content-addressed) lists a
  prefix once per process.
* ``location(path)`` names a file for other machines (``s3://...`` or the local path), and
  ``fetch_report(location)`` turns such a name back into a local file.

Nothing is compared byte by byte. A stored file is taken as the local one when the sizes match
and the local copy is not newer (then there is nothing to upload) or not older (nothing to
download); a download takes the object's time. Under an immutable prefix the size is enough.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from medops.errors import MedopsError, NotFoundError, StoreError
from medops.storage.artifacts import (
    ArtifactStore,
    ObjectInfo,
    check_key,
    is_remote,
    local_files,
    open_artifact_store,
    visible,
)

log = logging.getLogger(__name__)

# Seconds the local copy may seem older than the stored object and still count as it: S3 keeps
# whole seconds, and an upload's time is when it started, a little after the file was written.
_SLACK = 2.0
# Rounds of one publish while the folder changes under it (a checkpoint being rewritten).
_PASSES = 3

Stat = tuple[int, int]  # size, mtime in ns


class ArtifactSync:
    """``local``: the folder the code uses; ``store``: the shared root (None: local is it)."""

    def __init__(self, local: Path, store: ArtifactStore | None = None) -> None:
        self.local = Path(local)
        self.store = store
        self._known: dict[str, Stat] = {}  # key -> local stat it was last uploaded/fetched at
        self._listed: set[str] = set()  # prefixes whose stored state this process has seen
        self._settled: set[str] = set()  # immutable prefixes already ensured
        self._background: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root: Path, uri: str, local: Path) -> ArtifactSync:
        """The project's sync for storage.artifacts ``uri`` (checked at once when remote: a
        missing bucket fails the command that needs it, not a step an hour later)."""
        if not is_remote(uri):
            return cls(local)
        store = open_artifact_store(uri, root)
        store.check()
        return cls(local, store)

    def __repr__(self) -> str:
        return f"ArtifactSync({str(self.local)!r}, {self.store!r})"

    @property
    def remote(self) -> bool:
        return self.store is not None

    def key(self, path: Path) -> str:
        """``path``'s key: where it lies under the local folder."""
        try:
            relative = Path(path).resolve().relative_to(self.local.resolve())
        except ValueError:
            raise StoreError(f"{path} is not under the artifact folder {self.local}") from None
        return check_key(relative.as_posix(), prefix=True)

    def location(self, path: Path) -> str:
        """How other machines find ``path``: its URI in the store, or the local path."""
        return self.store.url(self.key(path)) if self.store is not None else str(path)

    # -- upload ---------------------------------------------------------------------------------

    def publish(self, path: Path, *, delete: bool = False, strict: bool = True) -> int:
        """Upload the file or folder ``path`` where it differs from the store; with ``delete``,
        remove stored files under it that are gone locally. The number of files uploaded.
        ``strict=False``: a failure is logged, not raised (the files stay local and go up with
        the next publish)."""
        if self.store is None:
            return 0
        path = Path(path)
        running = self._background.get(self.key(path))
        if running is not None and running is not threading.current_thread():
            running.join()  # one upload of a folder at a time
        try:
            return self._publish(path, delete)
        except MedopsError as exc:
            if strict:
                raise
            log.warning("could not upload %s to %s: %s", path, self.store.uri, exc)
            return 0

    def publish_soon(self, path: Path) -> None:
        """``publish(path, strict=False)`` in a background thread, so that uploading a large
        checkpoint every epoch does not slow training; skipped while the previous one for
        ``path`` still runs (the next call, or a final :meth:`publish`, takes the change)."""
        if self.store is None:
            return
        key = self.key(path)
        with self._lock:
            running = self._background.get(key)
            if running is not None and running.is_alive():
                return
            thread = threading.Thread(target=self.publish, args=(Path(path),),
                                      kwargs={"strict": False}, name="medops-publish",
                                      daemon=True)
            self._background[key] = thread
        thread.start()

    def _publish(self, path: Path, delete: bool) -> int:
        assert self.store is not None
        prefix = self.key(path)
        uploaded = 0
        files: dict[str, tuple[Path, Stat]] = {}
        for _ in range(_PASSES):
            files = self._stats(path, prefix)
            todo = {k: v for k, v in files.items() if self._known.get(k) != v[1]}
            if todo and path.is_dir() and prefix not in self._listed:
                self._learn(prefix, self.store.list(prefix), files)  # what it has already
                todo = {k: v for k, v in todo.items() if self._known.get(k) != v[1]}
            if not todo:
                break
            order = sorted(todo, key=lambda k: todo[k][1][1])  # oldest first, the index last
            self.store.put_tree((todo[k][0], k) for k in order[:-1])
            self.store.put_file(todo[order[-1]][0], order[-1])
            with self._lock:
                self._known.update({k: todo[k][1] for k in order})
            uploaded += len(order)
        if delete and path.is_dir():
            gone = [o.key for o in self.store.list(prefix)
                    if o.key not in files and visible(o.key)]
            self.store.delete(gone)
            with self._lock:
                for key in gone:
                    self._known.pop(key, None)
        return uploaded

    def discard(self, path: Path, *, strict: bool = True) -> int:
        """Remove the stored copy of the file or folder ``path`` (deleted locally already);
        how many files. ``strict=False``: a failure is logged, not raised."""
        if self.store is None:
            return 0
        try:
            return self.store.delete(o.key for o in self.store.list(self.key(path)))
        except MedopsError as exc:
            if strict:
                raise
            log.warning("could not remove %s from %s: %s", path, self.store.uri, exc)
            return 0

    # -- download -------------------------------------------------------------------------------

    def ensure_local(self, path: Path, *, immutable: bool = False) -> Path:
        """``path``, with what the store holds under it brought into the working copy (files
        missing or older here); ``path`` itself when the store has nothing there."""
        path = Path(path)
        if self.store is None:
            return path
        prefix = self.key(path)
        if immutable and prefix in self._settled:
            return path
        objects = self.store.list(prefix)
        files = self._stats(path, prefix)
        stale = [o for o in objects
                 if visible(o.key) and not _current(files.get(o.key), o, immutable)]
        if stale:
            self.store.fetch(stale, self.local)
            files = self._stats(path, prefix)
        self._learn(prefix, objects, files)
        if immutable:
            self._settled.add(prefix)
        return path

    def fetch_report(self, location: str) -> Path:
        """A local copy of the file :meth:`location` named (a monitor report made on another
        machine, for the dashboard); :class:`NotFoundError` when there is none."""
        if self.store is not None and location.startswith(self.store.uri + "/"):
            path = self.local / check_key(location[len(self.store.uri) + 1:])
            self.ensure_local(path)
        else:
            path = Path(location)
        if not path.is_file():
            raise NotFoundError(f"report {location} not found; it was written on a machine "
                                "whose artifact root is local to it")
        return path

    # -- bookkeeping ----------------------------------------------------------------------------

    def _stats(self, path: Path, prefix: str) -> dict[str, tuple[Path, Stat]]:
        out: dict[str, tuple[Path, Stat]] = {}
        for relative, file in local_files(path) if path.exists() else []:
            try:
                stat = file.stat()
            except FileNotFoundError:  # removed since it was listed (an old kept epoch)
                continue
            key = "/".join(p for p in (prefix, relative) if p)
            out[key] = (file, (stat.st_size, stat.st_mtime_ns))
        return out

    def _learn(self, prefix: str, objects: list[ObjectInfo],
               files: dict[str, tuple[Path, Stat]]) -> None:
        """Record which local files the store holds as they are (none changed since)."""
        with self._lock:
            for obj in objects:
                found = files.get(obj.key)
                if found is not None and found[1][0] == obj.size \
                        and found[1][1] / 1e9 <= obj.modified + _SLACK:
                    self._known[obj.key] = found[1]
            self._listed.add(prefix)


def _current(local: tuple[Path, Stat] | None, obj: ObjectInfo, immutable: bool) -> bool:
    """Whether the local copy may stand for ``obj``: the same size and, unless what a key
    holds never changes, not older."""
    if local is None:
        return False
    size, mtime_ns = local[1]
    return size == obj.size and (immutable or mtime_ns / 1e9 >= obj.modified - _SLACK)
