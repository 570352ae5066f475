"""A state store on each database the suite runs against (``state_url``: SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from medops.storage import StateStore


@pytest.fixture
def store(state_url: str) -> Iterator[StateStore]:
    s = StateStore(state_url)
    yield s
    s.close()
