"""Inline SVG line charts for the drill report: RTO or RPO of one source over time.

A drill lead glances at these to answer "are we inside the objective, and is
it getting worse?", so the chart must never hide the data:

* the y axis spans the measured values *and* the objective.  When they are of
  the same order the axis is linear from 0; when they differ by more than
  ``LOG_RATIO`` (a 4 s restore against a 4 h objective) a linear axis would
  flatten every point onto the x axis, so the axis becomes logarithmic with
  duration ticks (1s, 10s, 1m, 10m, 1h, ...) and points and objective line
  both stay readable;
* tick labels are durations ("15m", "2h"), not bare numbers in a unit;
* time labels differ: their format follows the span (dates for weeks, date
  and time for a day, seconds for minutes), and a single rehearsal gets one
  centred label, never the same date twice;
* one point is drawn large and labelled with its value; many points get
  smaller markers so they do not merge into a blot; the newest is labelled.

Pure: (time, seconds, passed) points in, one ``<svg>`` element out.
"""
from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from html import escape
from typing import Callable

from drtool.snapshot.timeparse import format_duration

CHART_W, CHART_H = 460, 200
PAD_L, PAD_R, PAD_T, PAD_B = 58, 20, 26, 34
PASS_COLOR, FAIL_COLOR, LINE_COLOR, GOAL_COLOR = "#1a7f37", "#cf222e", "#0969da", "#bf8700"
LOG_RATIO = 20.0
#: durations a log axis may label (seconds)
LOG_TICKS = (0.1, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 2 * 3600, 6 * 3600, 12 * 3600, 86400,
             2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 90 * 86400, 365 * 86400)
MAX_TICKS = 6

Point = tuple[datetime, "float | None", bool]


def human(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return format_duration(timedelta(seconds=round(seconds)))


UNITS = {86400.0: "d", 3600.0: "h", 60.0: "m", 1.0: "s"}


def tick_label(seconds: float, unit: float | None = None) -> str:
    """Short axis labels: 0, 0.5s, 30s, 1.5m, 2h, 7d; in ``unit`` when the axis has one."""
    if seconds == 0:
        return "0"
    if unit is None:
        unit = next((size for size in UNITS if seconds >= size), 1.0)
    return f"{seconds / unit:.3g}{UNITS[unit]}"


class Axis:
    """Maps seconds to a y pixel: linear from 0, or logarithmic when the values span decades."""

    def __init__(self, values: list[float], goal: float | None, top_px: float, bottom_px: float) -> None:
        known = [v for v in values + ([goal] if goal is not None else []) if v is not None]
        positive = [v for v in known if v > 0]
        highest = max(positive, default=1.0)  # all zero (or nothing): an axis up to 1s
        lowest = min(positive, default=highest)
        self.top_px, self.bottom_px = top_px, bottom_px
        self.log = highest / lowest > LOG_RATIO
        self.unit: float | None = None  # log axes label each tick in its own unit
        if self.log:
            floor = lowest / 3
            self.lo = max(v for v in LOG_TICKS if v <= floor) if floor >= LOG_TICKS[0] \
                else 10 ** math.floor(math.log10(floor))
            self.hi = min((v for v in LOG_TICKS if v >= highest * 1.3), default=highest * 2)
            self.ticks = _thin([v for v in LOG_TICKS if self.lo <= v <= self.hi])
        else:  # a round step in the unit the labels use (30m, not 1800s; 12h, not 0.58d)
            unit = self.unit = next((size for size in (86400.0, 3600.0, 60.0) if highest >= 1.5 * size), 1.0)
            step = _nice_step(highest * 1.15 / 4 / unit) * unit
            self.lo, self.hi = 0.0, step * math.ceil(highest * 1.15 / step)
            self.ticks = [i * step for i in range(1, int(round(self.hi / step)) + 1)]

    def __call__(self, seconds: float) -> float:
        span = self.bottom_px - self.top_px
        if self.log:
            value = min(max(seconds, self.lo), self.hi)
            share = (math.log(value) - math.log(self.lo)) / (math.log(self.hi) - math.log(self.lo))
        else:
            share = seconds / self.hi
        return self.bottom_px - share * span


def _thin(ticks: list[float]) -> list[float]:
    while len(ticks) > MAX_TICKS:
        ticks = ticks[::2]
    return ticks


def _nice_step(raw: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten: axis labels people can read at a glance."""
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def time_labels(t0: datetime, t1: datetime) -> list[tuple[float, str]]:
    """(fraction along the x axis, label) pairs, every label different (UTC)."""
    t0, t1 = t0.astimezone(timezone.utc), t1.astimezone(timezone.utc)
    if t0 == t1:
        return [(0.5, f"{t0:%Y-%m-%d %H:%M} UTC")]
    span = (t1 - t0).total_seconds()
    formats = ["%Y-%m-%d", "%m-%d %H:%M", "%m-%d %H:%M:%S", "%H:%M:%S.%f"]
    if span < 2 * 86400:
        formats = formats[1:]
    count = 3 if span >= 60 else 2
    moments = [(i / (count - 1), t0 + timedelta(seconds=span * i / (count - 1))) for i in range(count)]
    for fmt in formats:
        labels = [(share, f"{when:{fmt}}") for share, when in moments]
        if len({text for _s, text in labels}) == len(labels):
            return labels
    return [(0.0, f"{t0:{formats[-1]}}"), (1.0, f"{t1:{formats[-1]}}")]


def svg_chart(title: str, points: list[Point], goal: float | None) -> str:
    """A small line chart: measured values over time, the objective as a dashed line."""
    plot_w = CHART_W - PAD_L - PAD_R
    measured = [(t, v, ok) for t, v, ok in points if v is not None]
    axis = Axis([v for _t, v, _ok in measured], goal, PAD_T, CHART_H - PAD_B)
    times = [t for t, _v, _ok in points]
    t0, t1 = min(times), max(times)
    span = (t1 - t0).total_seconds()

    def x(t: datetime) -> float:
        return PAD_L + (plot_w / 2 if not span else (t - t0).total_seconds() / span * plot_w)
    scale = "log scale" if axis.log else ""
    parts = [f'<svg width="{CHART_W}" height="{CHART_H}" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
             f'aria-label="{escape(title)}">',
             f'<rect width="{CHART_W}" height="{CHART_H}" fill="#ffffff"/>',
             f'<text x="{PAD_L}" y="16" font-size="13" font-weight="600">{escape(title)}'
             + (f' <tspan font-weight="400" fill="#59636e">({scale})</tspan>' if scale else "") + "</text>"]
    parts += _grid(axis)
    for share, label in time_labels(t0, t1):
        anchor = "start" if share == 0 and len(times) > 1 else "end" if share == 1 else "middle"
        parts.append(f'<text class="time" x="{PAD_L + share * plot_w:.1f}" y="{CHART_H - 10}" font-size="11" '
                     f'fill="#59636e" text-anchor="{anchor}">{escape(label)}</text>')
    if goal is not None:
        parts.append(_goal_line(goal, axis))
    parts += _marks(measured, x, axis, axis(goal) if goal is not None else None)
    parts.append("</svg>")
    return "".join(parts)


def _grid(axis: Axis) -> list[str]:
    bottom = CHART_H - PAD_B
    parts = [f'<line x1="{PAD_L}" x2="{PAD_L}" y1="{PAD_T}" y2="{bottom}" stroke="#8c959f"/>',
             f'<line x1="{PAD_L}" x2="{CHART_W - PAD_R}" y1="{bottom}" y2="{bottom}" stroke="#8c959f"/>',
             f'<text class="tick" x="{PAD_L - 6}" y="{bottom + 4}" font-size="11" fill="#59636e" '
             f'text-anchor="end">{escape(tick_label(axis.lo, axis.unit))}</text>']
    for value in axis.ticks:
        if value == axis.lo:
            continue
        y = axis(value)
        parts.append(f'<line x1="{PAD_L}" x2="{CHART_W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
                     f'<text class="tick" x="{PAD_L - 6}" y="{y + 4:.1f}" font-size="11" fill="#59636e" '
                     f'text-anchor="end">{escape(tick_label(value, axis.unit))}</text>')
    return parts


def _goal_line(goal: float, axis: Axis) -> str:
    y = axis(goal)
    return (f'<line x1="{PAD_L}" x2="{CHART_W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GOAL_COLOR}" '
            f'stroke-width="1.5" stroke-dasharray="6 4"/>'
            f'<text x="{CHART_W - PAD_R}" y="{y - 4:.1f}" font-size="11" fill="#9a6700" '
            f'text-anchor="end">objective {escape(human(goal))}</text>')


def _marks(measured: list[Point], x: Callable[[datetime], float], axis: Axis,
           goal_y: float | None) -> list[str]:
    """The line, one marker per rehearsal (green passed, red failed), the newest value labelled."""
    if not measured:
        return [f'<text x="{PAD_L + 8}" y="{PAD_T + 16}" font-size="12" fill="{FAIL_COLOR}">'
                f'no rehearsal recovered: nothing measured</text>']
    radius = 5 if len(measured) == 1 else 4 if len(measured) <= 30 else 2.5 if len(measured) <= 120 else 1.5
    parts = []
    if len(measured) > 1:
        line = " ".join(f"{x(t):.1f},{axis(v):.1f}" for t, v, _ok in measured if v is not None)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{LINE_COLOR}" stroke-width="1.5"/>')
    for t, v, ok in measured:
        assert v is not None
        parts.append(f'<circle cx="{x(t):.1f}" cy="{axis(v):.1f}" r="{radius}" '
                     f'fill="{PASS_COLOR if ok else FAIL_COLOR}"><title>{t.astimezone(timezone.utc):%Y-%m-%d %H:%M} '
                     f'UTC: {escape(human(v))}</title></circle>')
    t, v, _ok = measured[-1]
    assert v is not None
    px, py = x(t), axis(v)
    anchor = "end" if px > CHART_W - PAD_R - 60 else "start"
    dx = -8 if anchor == "end" else 8
    label_y = max(py - 6, PAD_T + 10)
    if goal_y is not None and abs(label_y - goal_y) < 14:  # not on top of the objective's label
        label_y = py + 16 if py + 16 < CHART_H - PAD_B else py - 18
    parts.append(f'<text class="value" x="{px + dx:.1f}" y="{label_y:.1f}" font-size="11" '
                 f'font-weight="600" fill="#1f2328" text-anchor="{anchor}">{escape(human(v))}</text>')
    return parts
