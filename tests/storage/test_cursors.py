"""Source cursors in the state store (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

from medops.storage import StateStore


def test_cursor_is_stored_replaced_and_listed(state_url: str) -> None:
    store = StateStore(state_url)
    assert store.get_cursor("pacs") is None and store.cursors() == {}
    store.set_cursor("pacs", "17")
    store.set_cursor("bucket", "etag-list-1")
    store.set_cursor("pacs", "42")
    assert store.get_cursor("pacs") == "42"
    cursors = store.cursors()
    assert list(cursors) == ["bucket", "pacs"] and cursors["pacs"][0] == "42"
    assert cursors["pacs"][1] >= cursors["bucket"][1] and cursors["pacs"][1].tzinfo is not None
    store.close()
    assert StateStore(state_url).get_cursor("pacs") == "42"  # durable across processes
