"""A content-addressed store of preprocessed arrays.

Layout: ``root/<profile fingerprint>/<hash[:2]>/<hash>[_f<frame>].npy``, plus
``root/<fingerprint>/profile.json`` describing the folder. An entry depends only on the file's
content and the profile, so a re-run with either unchanged finds it, and entries are shared by
every run and item with the same content. Writes go to a temporary file in the same folder
and are renamed into place (atomic on POSIX and Windows), so a killed worker leaves no
half-written entry behind; a damaged entry found later counts as missing.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np

from medops.preprocess.profile import PreprocessProfile

# Content hashes become file names: refuse anything that could escape the folder.
_HASH = re.compile(r"[0-9A-Za-z_-]{2,128}")


class PreprocessCache:
    """Preprocessed arrays under ``root``, keyed by profile, content hash and frame."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"PreprocessCache({str(self.root)!r})"

    def path(self, profile: PreprocessProfile, content_hash: str, frame: int | None = None) -> Path:
        """Where the entry lives (whether or not it exists)."""
        if not _HASH.fullmatch(content_hash):
            raise ValueError(
                f"invalid content hash {content_hash!r}: expected 2-128 characters of [0-9A-Za-z_-]"
            )
        name = content_hash if frame is None else f"{content_hash}_f{int(frame)}"
        return self.root / profile.fingerprint() / content_hash[:2] / f"{name}.npy"

    def contains(
        self, profile: PreprocessProfile, content_hash: str, frame: int | None = None
    ) -> bool:
        return self.path(profile, content_hash, frame).is_file()

    def get(
        self, profile: PreprocessProfile, content_hash: str, frame: int | None = None
    ) -> np.ndarray | None:
        """The stored array, or None when absent or unreadable (then it is removed)."""
        path = self.path(profile, content_hash, frame)
        try:
            return np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)  # damaged (disk trouble, manual edits): recompute
            return None

    def put(
        self, profile: PreprocessProfile, content_hash: str, frame: int | None, array: np.ndarray
    ) -> Path:
        """Store ``array`` atomically; concurrent writers of one entry are harmless."""
        path = self.path(profile, content_hash, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, np.ascontiguousarray(array), allow_pickle=False)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def write_profile(self, profile: PreprocessProfile) -> Path:
        """Record which profile a fingerprint folder belongs to (for people and tools)."""
        path = self.root / profile.fingerprint() / "profile.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".profile.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(profile.to_json() + "\n")
            Path(tmp).replace(path)
        return path
