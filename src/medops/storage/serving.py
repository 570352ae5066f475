"""What the live model's endpoint did, minute by minute: ``serving_stats``.

`medops serve` writes one row per minute, model version and serving process: requests, client
errors (4xx), server errors (5xx) and latency percentiles computed from the latencies of that
minute (see :mod:`medops.serve.stats`). A row written again for the same minute (a flush before
the minute ended, then the full minute) replaces the first. In the state database, beside
``monitor_results``; numbers only, never a request or an image.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import DateTime, Float, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from medops.storage.engine import Database, transactional


@dataclass(frozen=True)
class ServingWindow:
    """One minute (or, for the last one, the part of it so far) of one model's traffic.

    The percentiles are in milliseconds, None when the window had no request. Several serving
    processes make several rows a minute; :meth:`ServingStats.series` merges them."""

    model: str
    version: str | None  # the version live when the requests came; None: none loaded yet
    start: datetime  # UTC, on a minute boundary
    requests: int
    errors_4xx: int
    errors_5xx: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    instance: str = ""  # the serving process (host:pid); "" for a merged window
    seconds: float = 60.0

    @property
    def error_rate(self) -> float:
        """Share of requests answered with an error (4xx or 5xx); 0 without requests."""
        return (self.errors_4xx + self.errors_5xx) / self.requests if self.requests else 0.0


class _Base(DeclarativeBase):
    pass


class _Window(_Base):
    __tablename__ = "serving_stats"
    __table_args__ = (UniqueConstraint("model", "instance", "window_start", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(255), index=True)
    # "" rather than NULL for "no version yet": NULLs never collide in a unique constraint
    version: Mapped[str] = mapped_column(String(64))
    instance: Mapped[str] = mapped_column(String(255))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    seconds: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(Integer)
    errors_4xx: Mapped[int] = mapped_column(Integer)
    errors_5xx: Mapped[int] = mapped_column(Integer)
    p50_ms: Mapped[float | None] = mapped_column(Float)
    p95_ms: Mapped[float | None] = mapped_column(Float)
    p99_ms: Mapped[float | None] = mapped_column(Float)
    max_ms: Mapped[float | None] = mapped_column(Float)
    written_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


_FIELDS = ("seconds", "requests", "errors_4xx", "errors_5xx", "p50_ms", "p95_ms", "p99_ms",
           "max_ms")


class ServingStats:
    """Rows of ``serving_stats`` in the state database ``db``; every call is one
    transaction, retried on a lost connection like the state store's."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure(_Base.metadata.sorted_tables)

    @transactional("store serving figures", integrity_passes=False)
    def record(self, s: Session, *windows: ServingWindow) -> None:
        """Store ``windows`` in one transaction, each replacing its earlier row, if any."""
        now = datetime.now(timezone.utc)
        for w in windows:
            row = s.scalar(select(_Window).where(
                _Window.model == w.model, _Window.instance == w.instance,
                _Window.window_start == w.start, _Window.version == (w.version or "")))
            if row is None:
                row = _Window(model=w.model, instance=w.instance, window_start=w.start,
                              version=w.version or "")
                s.add(row)
            for name in _FIELDS:
                setattr(row, name, getattr(w, name))
            row.written_at = now

    @transactional("read serving figures", integrity_passes=False)
    def series(self, s: Session, model: str, since: datetime,
               until: datetime | None = None) -> list[ServingWindow]:
        """``model``'s windows from ``since`` (until ``until``), oldest first, one a minute.

        The rows of several serving processes in a minute are merged: counts add up, and each
        percentile is the highest of theirs, an upper bound of the merged one (the exact value
        needs latencies no row keeps). The version is the one that answered most requests."""
        q = select(_Window).where(_Window.model == model, _Window.window_start >= since)
        if until is not None:
            q = q.where(_Window.window_start < until)
        rows = list(s.scalars(q.order_by(_Window.window_start, _Window.id)))
        minutes: dict[datetime, list[_Window]] = defaultdict(list)
        for row in rows:
            minutes[_aware(row.window_start)].append(row)
        return [_merge(model, start, group) for start, group in minutes.items()]


def _merge(model: str, start: datetime, rows: list[_Window]) -> ServingWindow:
    if len(rows) == 1:
        return _window(rows[0])
    busiest = max(rows, key=lambda r: r.requests)

    def highest(name: str) -> float | None:
        values = [v for r in rows if (v := getattr(r, name)) is not None]
        return max(values) if values else None

    return ServingWindow(model=model, version=busiest.version or None, start=start,
                         requests=sum(r.requests for r in rows),
                         errors_4xx=sum(r.errors_4xx for r in rows),
                         errors_5xx=sum(r.errors_5xx for r in rows),
                         p50_ms=highest("p50_ms"), p95_ms=highest("p95_ms"),
                         p99_ms=highest("p99_ms"), max_ms=highest("max_ms"),
                         seconds=max(r.seconds for r in rows))


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _window(r: _Window) -> ServingWindow:
    return ServingWindow(model=r.model, version=r.version or None, start=_aware(r.window_start),
                         requests=r.requests, errors_4xx=r.errors_4xx, errors_5xx=r.errors_5xx,
                         p50_ms=r.p50_ms, p95_ms=r.p95_ms, p99_ms=r.p99_ms, max_ms=r.max_ms,
                         instance=r.instance, seconds=r.seconds)
