"""Charts as inline SVG, drawn on the server: no JavaScript, no chart library, nothing fetched.

Three shapes cover the dashboard: a line chart over time (drift p-values, live quality, serving
latency), a line chart over steps (training curves) and horizontal bars on a time axis (a run's
step timeline). Each returns an SVG string that Jinja puts in the page as is, so every text
that goes into one is escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

#: Colours of successive series (colour-blind-safe: Okabe and Ito's palette).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")
_STATUS = {"succeeded": "#009E73", "failed": "#D55E00", "running": "#E69F00",
           "pending": "#BBBBBB", "interrupted": "#CC79A7"}
_W, _H = 520, 230
_DOTS = 60  # a series of more points is a line without a dot (and tooltip) per point
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 26, 36


@dataclass(frozen=True)
class Series:
    """One line: a name for the legend and (x, y) points; a None y breaks the line."""

    name: str
    points: Sequence[tuple[float, float | None]]


@dataclass(frozen=True)
class Bar:
    """One bar of a timeline: a label, when it started and ended, and its state."""

    label: str
    start: datetime
    end: datetime
    status: str
    title: str = ""


def line_chart(series: Sequence[Series], *, title: str, x_time: bool = True,
               y_label: str = "", y_range: tuple[float, float] | None = None,
               log_y: bool = False, rules: Sequence[tuple[float, str]] = ()) -> str:
    """Lines over time (x in epoch seconds when ``x_time``) or over steps; ``rules``:
    horizontal reference lines (a threshold) as (y, label)."""
    shown = [s for s in series if any(y is not None for _, y in s.points)]
    if not shown:
        return _empty(title, "no data yet")

    def ty(v: float) -> float:
        return math.log10(max(v, 1e-12)) if log_y else v

    xs = [x for s in shown for x, _ in s.points]
    ys = [ty(y) for s in shown for _, y in s.points if y is not None]
    ys += [ty(y) for y, _ in rules]
    x0, x1 = min(xs), max(xs)
    y0, y1 = (ty(y_range[0]), ty(y_range[1])) if y_range else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def px(x: float) -> float:
        return _LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return _TOP + ph - (ty(y) - y0) / (y1 - y0) * ph

    out = [_open(title), _heading(title), _axes(pw, ph)]
    for value in _y_ticks(y0, y1, log_y):  # grid and labels (decades on a log axis)
        y = _TOP + ph - (value - y0) / (y1 - y0) * ph
        shown_value = 10 ** value if log_y else value
        out.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + pw}" y2="{y:.1f}" '
                   'class="grid"/>')
        out.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                   f'{escape(_fmt(shown_value))}</text>')
    ticks = _x_ticks(x0, x1, x_time)
    for i, value in enumerate(ticks):
        label = datetime.fromtimestamp(value).strftime("%m-%d %H:%M") if x_time \
            else _fmt(value)
        anchor = "start" if i == 0 and x_time else \
            "end" if i == len(ticks) - 1 and x_time else "middle"
        out.append(f'<text x="{px(value):.1f}" y="{_H - _BOTTOM + 16}" '
                   f'text-anchor="{anchor}">{escape(label)}</text>')
    for y, label in rules:
        out.append(f'<line x1="{_LEFT}" y1="{py(y):.1f}" x2="{_LEFT + pw}" y2="{py(y):.1f}" '
                   f'class="rule"><title>{escape(label)}</title></line>')
        out.append(f'<text x="{_LEFT + pw - 2}" y="{py(y) - 4:.1f}" text-anchor="end" '
                   f'class="rule-label">{escape(label)}</text>')
    for n, s in enumerate(shown):
        colour = PALETTE[n % len(PALETTE)]
        for run in _runs(s.points):
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in run)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       f'stroke-width="2"><title>{escape(s.name)}</title></polyline>')
            for x, y in run if len(s.points) <= _DOTS else ():
                what = datetime.fromtimestamp(x).isoformat(timespec="minutes") if x_time \
                    else _fmt(x)
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" '
                           f'fill="{colour}"><title>{escape(s.name)} {escape(what)}: '
                           f'{escape(_fmt(y))}</title></circle>')
    out.append(_legend([s.name for s in shown]))
    if y_label:
        out.append(f'<text x="12" y="{_TOP + ph / 2:.1f}" text-anchor="middle" '
                   f'transform="rotate(-90 12 {_TOP + ph / 2:.1f})">{escape(y_label)}</text>')
    out.append("</svg>")
    return "".join(out)


def timeline(bars: Sequence[Bar], *, title: str, width: int = 880) -> str:
    """A run's steps as bars from their start to their end, one row each."""
    if not bars:
        return _empty(title, "no step has started")
    t0 = min(b.start for b in bars)
    t1 = max(b.end for b in bars)
    span = max((t1 - t0).total_seconds(), 1e-3)
    row, label_w = 22, 90
    height = _TOP + row * len(bars) + _BOTTOM
    pw = width - label_w - _RIGHT
    out = [_open(title, height, width), _heading(title),
           f'<line x1="{label_w}" y1="{_TOP}" x2="{label_w}" y2="{height - _BOTTOM}" '
           'class="axis"/>']
    for i, b in enumerate(bars):
        y = _TOP + i * row
        x = label_w + (b.start - t0).total_seconds() / span * pw
        w = max((b.end - b.start).total_seconds() / span * pw, 2.0)
        colour = _STATUS.get(b.status, "#999999")
        seconds = (b.end - b.start).total_seconds()
        tip = b.title or f"{b.label}: {b.status}, {seconds:.1f} s"
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">'
                   f'{escape(b.label)}</text>')
        out.append(f'<rect x="{x:.1f}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
                   f'fill="{colour}" rx="2"><title>{escape(tip)}</title></rect>')
        out.append(f'<text x="{min(x + w + 4, width - _RIGHT - 30):.1f}" y="{y + 15}" '
                   f'class="small">{escape(_duration(seconds))}</text>')
    out.append(f'<text x="{label_w}" y="{height - _BOTTOM + 16}">0 s</text>')
    out.append(f'<text x="{width - _RIGHT}" y="{height - _BOTTOM + 16}" text-anchor="end">'
               f'{escape(_duration(span))}</text>')
    out.append("</svg>")
    return "".join(out)


def _y_ticks(y0: float, y1: float, log_y: bool) -> list[float]:
    """Round values (steps of 1, 2 or 5 times a power of ten, three to six of them), or each
    power of ten (given as its exponent) on a log axis."""
    if log_y:
        decades = [float(k) for k in range(math.ceil(y0), math.floor(y1) + 1)]
        if len(decades) >= 2:
            return decades
    raw = (y1 - y0) / 5
    size = 10 ** math.floor(math.log10(raw))
    step = next(m * size for m in (1, 2, 5, 10) if m * size >= raw)
    first = math.ceil(y0 / step) * step
    return [first + i * step for i in range(int((y1 - first) / step + 1e-9) + 1)]


def _x_ticks(x0: float, x1: float, x_time: bool) -> list[float]:
    """Four evenly spaced times, or whole steps (epochs) at most seven of them."""
    if x_time:
        return [x0 + (x1 - x0) * i / 3 for i in range(4)]
    every = max(1, math.ceil((x1 - x0) / 6))
    return [float(v) for v in range(math.ceil(x0), math.floor(x1) + 1, every)]


def _runs(points: Sequence[tuple[float, float | None]]) -> list[list[tuple[float, float]]]:
    """The points split where y is missing, so a gap is not drawn as a line."""
    runs: list[list[tuple[float, float]]] = [[]]
    for x, y in sorted(points, key=lambda p: p[0]):
        if y is None or (isinstance(y, float) and math.isnan(y)):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((x, y))
    return [r for r in runs if r]


def _open(title: str, height: int = _H, width: int = _W) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" '
            f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
            f'<title>{escape(title)}</title>')


def _heading(title: str) -> str:
    return f'<text x="{_LEFT}" y="14" class="heading">{escape(title)}</text>'


def _axes(pw: float, ph: float) -> str:
    return (f'<line x1="{_LEFT}" y1="{_TOP}" x2="{_LEFT}" y2="{_TOP + ph}" class="axis"/>'
            f'<line x1="{_LEFT}" y1="{_TOP + ph}" x2="{_LEFT + pw}" y2="{_TOP + ph}" '
            'class="axis"/>')


def _legend(names: Sequence[str]) -> str:
    out, x = [], _LEFT
    for n, name in enumerate(names):
        colour = PALETTE[n % len(PALETTE)]
        out.append(f'<rect x="{x}" y="{_H - 12}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{x + 14}" y="{_H - 3}" class="small">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return "".join(out)


def _empty(title: str, text: str) -> str:
    return (f'{_open(title, 60)}<text x="{_W / 2}" y="34" text-anchor="middle" class="muted">'
            f'{escape(title)}: {escape(text)}</text></svg>')


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.3g}"
    return f"{v:.3g}" if abs(v) >= 1e-3 else f"{v:.1e}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
