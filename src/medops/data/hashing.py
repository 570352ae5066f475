"""Content hashes: an item's identity is what it contains, not where it lives."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def pseudonym(value: str, prefix: str) -> str:
    """A stable non-reversible stand-in for an identifier such as a PatientID.

    Identifiers are hashed before they are stored so that manifests and MLflow artifacts carry
    no PHI; grouping by patient only needs equality, which the hash keeps.
    """
    return f"{prefix}-{hashlib.sha256(value.encode()).hexdigest()[:16]}"
