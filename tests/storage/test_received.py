"""The receiver's index on both stores: what is due for deletion under keep_received."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from medops.storage import StateStore
from medops.storage.received import ReceivedIndex, ReceivedInstance, ReceivedStatus


def _instance(sop: str) -> ReceivedInstance:
    return ReceivedInstance(source="scanner", sop_hash=sop, series_hash="se", study_hash="st",
                            path=f"st/se/{sop}.dcm", size=10, calling_ae="CT01")


def test_only_ingested_instances_are_due_and_purged_ones_stay_duplicates(
        store: StateStore) -> None:
    index = ReceivedIndex(store.db)
    for sop in ("a", "b", "c"):
        assert index.add(_instance(sop))
    index.mark("scanner", ["a", "b"], ReceivedStatus.INGESTED)  # c: its series not complete
    now = datetime.now(timezone.utc)
    assert index.ingested_before("scanner", now - timedelta(hours=1)) == []
    due = index.ingested_before("scanner", now + timedelta(seconds=1))
    assert [i.sop_hash for i in due] == ["a", "b"]
    assert index.ingested_before("other", now + timedelta(seconds=1)) == []

    index.mark("scanner", ["a"], ReceivedStatus.PURGED)
    assert [i.sop_hash for i in index.ingested_before("scanner", now + timedelta(seconds=1))] \
        == ["b"]
    assert index.counts("scanner") == {"purged": 1, "ingested": 1, "received": 1}
    assert not index.add(_instance("a"))  # sent again after its file was deleted
    assert index.contains("scanner", "a")
