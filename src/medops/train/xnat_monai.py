"""A MONAI dictionary transform that downloads XNAT scans chosen by user "action" functions.

Training code lists subjects (:func:`medops.data.sources.xnat.list_subjects`), puts each in a
dict, and lets this transform fetch what it needs::

    def t1(subject):                       # an action: given an xnat subject object ...
        session = subject.experiments[0]
        return session.scans["T1"], "image"    # ... the scan and the key to store it under

    load = LoadXnatScand(keys="subject", cfg=xnat_cfg, actions=[t1], cache_dir=".medops/xnat")
    load({"subject": ref})  ->  {"subject": ref, "image": ".medops/xnat/P/S/E/1"}

Each scan's DICOM files are downloaded once into ``cache_dir/project/subject/experiment/scan``
(written to a temporary folder and renamed, so an interrupted download is never taken for a
complete one); later calls, in this process or another, reuse the folder.

This module imports MONAI (and so PyTorch): it is imported only by code that trains with MONAI,
never by the ingester, which uses :class:`~medops.data.sources.xnat.XnatSource`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform

from medops.config.sources import XnatSourceConfig
from medops.data.sources.xnat import XnatSubjectRef, connect, download_scan, scan_key
from medops.errors import DataError

#: Given an ``xnat`` subject object: (the ``xnat`` scan object, the output key), or None to skip.
Action = Callable[[Any], tuple[Any, str] | None]


class ScanCache:
    """Scans on local disk, one folder each, downloaded at most once."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, scan: Any) -> Path:
        return self.root.joinpath(*(_safe(part) for part in scan_key(scan)))

    def get(self, scan: Any) -> Path:
        target = self.path(scan)
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            for name, data in download_scan(scan):
                (partial / _safe(name)).write_bytes(data)
            try:
                partial.rename(target)
            except OSError:
                if not target.is_dir():  # another worker finished first: keep its copy
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return target


class LoadXnatScand(MapTransform):
    """For each subject under ``keys``, run every action and store the scan folder it picks.

    The value under a key is an :class:`~medops.data.sources.xnat.XnatSubjectRef`, a dict with
    ``uri``, or the subject's REST URI. The connection is opened on first use in each process
    (so the transform can be pickled into DataLoader workers).
    """

    def __init__(self, keys: KeysCollection, cfg: XnatSourceConfig, actions: Sequence[Action],
                 cache_dir: str | os.PathLike[str], allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if not actions:
            raise ValueError("LoadXnatScand needs at least one action")
        self.cfg = cfg
        self.actions = list(actions)
        self.cache = ScanCache(cache_dir)
        self._session: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_session"] = None  # a connection does not cross process boundaries
        return state

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            subject = self._subject(d[key])
            for action in self.actions:
                picked = action(subject)
                if picked is None:
                    continue
                scan, out_key = picked
                if out_key in d and out_key != key:
                    raise DataError(f"action {getattr(action, '__name__', action)!r} stores "
                                    f"under {out_key!r}, which the data already holds")
                d[out_key] = str(self.cache.get(scan))
        return d

    def close(self) -> None:
        if self._session is not None:
            self._session.disconnect()
            self._session = None

    def _subject(self, value: Any) -> Any:
        if isinstance(value, XnatSubjectRef):
            uri = value.uri
        elif isinstance(value, Mapping) and "uri" in value:
            uri = str(value["uri"])
        elif isinstance(value, str):
            uri = value
        else:
            raise DataError(f"LoadXnatScand: expected a subject reference, got "
                            f"{type(value).__name__}")
        if self._session is None:
            self._session = connect(self.cfg)
        return self._session.create_object(uri)


def _safe(part: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(part))
    return cleaned.lstrip(".") or "_"
