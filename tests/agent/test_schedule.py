"""Schedule slots: aligned, reproducible across processes, fired once each."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import datetime, timedelta, timezone

from medops.agent.schedule import Schedule, ScheduledJob, slot_key

T = datetime(2026, 11, 22, 3, 0, 0, 500_000, tzinfo=timezone.utc)


def test_interval_slots_are_aligned_to_the_epoch() -> None:
    s = Schedule(every=2.0)
    assert s.next_after(T) == datetime(2026, 11, 22, 3, 0, 2, tzinfo=timezone.utc)
    assert s.last_at_or_before(T) == datetime(2026, 11, 22, 3, 0, 0, tzinfo=timezone.utc)


def test_cron_slots_with_and_without_seconds() -> None:
    nightly = Schedule(cron="0 3 * * *")
    assert nightly.last_at_or_before(T) == T.replace(microsecond=0)
    assert nightly.next_after(T) == T.replace(microsecond=0) + timedelta(days=1)
    every5s = Schedule(cron="* * * * * */5")  # croniter: seconds are the 6th field
    assert every5s.next_after(T) == T.replace(second=5, microsecond=0)


def test_a_job_fires_each_slot_once_and_stops_when_told() -> None:
    fired: list[datetime] = []
    stop = threading.Event()
    job = ScheduledJob("tick", Schedule(every=0.2), fired.append, stop)
    job.start()
    time.sleep(1.1)
    stop.set()
    job.join(2)
    assert 4 <= len(fired) <= 7
    assert len({slot_key("tick", s) for s in fired}) == len(fired)
    gaps = {round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(fired)}
    assert 0.2 in gaps and gaps <= {0.2, 0.4}  # 0.4: a slot skipped on a stalled machine
