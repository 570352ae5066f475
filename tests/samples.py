"""pydicom's bundled test files, by name, as paths (never downloaded)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.data import get_testdata_file


def pydicom_file(name: str) -> Path:
    """The bundled file ``name``, or a skip where this pydicom does not ship it."""
    path = get_testdata_file(name, download=False)  # never reach for the network
    if not isinstance(path, str):
        pytest.skip(f"pydicom test file {name} is not installed")
    return Path(path)
