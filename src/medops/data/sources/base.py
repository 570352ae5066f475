"""The source interface: something that lists images as items."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from medops.storage.records import Item


class Source(Protocol):
    """Lists the items it holds. Unusable files come back quarantined, with the reason."""

    name: str

    def list_items(self) -> Iterator[Item]: ...
