"""When periodic things happen: cron expressions (croniter) and fixed intervals.

A fire time is a *slot*: the same instant whichever process computes it (interval slots are
aligned to the epoch), so ``schedule name + slot`` is an idempotency key and an agent restarted
within a slot does not fire it again.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from medops.errors import ConfigError, DependencyMissingError

log = logging.getLogger(__name__)

# A slot missed by at most this much (the agent was restarting) still fires once on start.
CATCH_UP = timedelta(seconds=60)


@dataclass(frozen=True)
class Schedule:
    """``cron`` (5 fields, or 6 with seconds last) or ``every`` seconds; times are UTC."""

    cron: str | None = None
    every: float | None = None

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise ConfigError("a schedule needs exactly one of cron or every")
        if self.cron is not None:
            try:
                from croniter import croniter
            except ModuleNotFoundError as exc:
                raise DependencyMissingError("croniter", "agent", "cron schedules") from exc
            if not croniter.is_valid(self.cron):
                raise ConfigError(f"cron {self.cron!r} is not a valid cron expression")

    def next_after(self, t: datetime) -> datetime:
        """The first slot strictly after ``t``."""
        if self.every is not None:
            k = math.floor(t.timestamp() / self.every) + 1
            return datetime.fromtimestamp(k * self.every, timezone.utc)
        from croniter import croniter

        nxt: datetime = croniter(self.cron, t).get_next(datetime)
        return nxt.astimezone(timezone.utc)

    def last_at_or_before(self, t: datetime) -> datetime:
        if self.every is not None:
            k = math.floor(t.timestamp() / self.every)
            return datetime.fromtimestamp(k * self.every, timezone.utc)
        from croniter import croniter

        # croniter's get_prev is strict: step a hair past t so a slot exactly at t counts.
        prev: datetime = croniter(self.cron, t + timedelta(microseconds=1)).get_prev(datetime)
        return prev.astimezone(timezone.utc)


def slot_key(name: str, slot: datetime) -> str:
    return f"schedule:{name}:{slot.astimezone(timezone.utc).isoformat(timespec='milliseconds')}"


class ScheduledJob:
    """Calls ``action(slot)`` at each slot of ``schedule`` in its own thread until stopped.

    On start, a slot that passed less than :data:`CATCH_UP` ago is fired too: the action must be
    idempotent per slot (the agent's actions store an event keyed by the slot).
    """

    def __init__(self, name: str, schedule: Schedule, action: Callable[[datetime], None],
                 stop: threading.Event, now: Callable[[], datetime] | None = None) -> None:
        self.name = name
        self.schedule = schedule
        self.action = action
        self._stop = stop
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._thread = threading.Thread(target=self._loop, name=f"job:{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        now = self._now()
        last = self.schedule.last_at_or_before(now)
        slot = last if now - last <= CATCH_UP else self.schedule.next_after(now)
        while not self._stop.is_set():
            wait = (slot - self._now()).total_seconds()
            if wait > 0 and self._stop.wait(wait):
                return
            try:
                self.action(slot)
            except Exception:  # one failed firing must not end the schedule
                log.exception("scheduled job %s failed at %s", self.name, slot.isoformat())
            slot = self.schedule.next_after(max(slot, self._now()))
