"""The drill report's charts read at a glance, checked on pixels in headless Chromium.

The bug this guards against: a 4-second RTO plotted against a 4-hour objective
on a linear axis sits on the x axis, and both time labels said the same date.
Each chart is screenshotted alone and its markers found by colour: they must
not all sit on the bottom rows, must be well apart from the objective line,
and the time labels (read from the DOM) must differ.
"""
from __future__ import annotations

import re
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from drtool.rehearse.charts import (CHART_H, CHART_W, PAD_B, PAD_T, Axis, svg_chart, tick_label,
                                    time_labels)
from drtool.rehearse.report import render_html
from test_report_html import chromium_args, decode_png, synthetic

ROOT = Path(__file__).resolve().parent.parent
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=timezone.utc)
PASS_RGB, GOAL_RGB = (0x1A, 0x7F, 0x37), (0xBF, 0x87, 0x00)
BOTTOM = CHART_H - PAD_B  # the x axis, in pixels from the top


def screenshot(svg: str, tmp_path: Path, name: str) -> list[list[tuple[int, ...]]]:
    page = tmp_path / f"{name}.html"
    page.write_text(f"<!DOCTYPE html><html><body style=\"margin:0\">{svg}</body></html>")
    png = tmp_path / f"{name}.png"
    shot = subprocess.run([*chromium_args(tmp_path / f"profile-{name}"), f"--screenshot={png}",
                           f"--window-size={CHART_W + 80},{CHART_H + 80}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    _w, _h, pixels = decode_png(png.read_bytes())
    return pixels


def rows_of(pixels: list[list[tuple[int, ...]]], rgb: tuple[int, int, int]) -> list[int]:
    """The y of every pixel within the chart close to ``rgb`` (anti-aliased edges included)."""
    return [y for y in range(CHART_H) for x in range(CHART_W)
            if sum(abs(a - b) for a, b in zip(pixels[y][x][:3], rgb)) < 40]


def test_one_fast_restore_against_a_long_objective_is_visible(tmp_path: Path) -> None:
    svg = svg_chart("RTO of media", [(T0, 4.2, True)], 4 * 3600.0)
    pixels = screenshot(svg, tmp_path, "one")
    marks, goal = rows_of(pixels, PASS_RGB), rows_of(pixels, GOAL_RGB)
    assert len(marks) > 20, "the single point is not drawn"
    bottom_rows = range(BOTTOM - 8, CHART_H)
    assert not all(y in bottom_rows for y in marks), f"the point sits on the x axis: rows {sorted(set(marks))}"
    assert goal and max(goal) < min(marks) - 20, "the objective line must be drawn well above the point"
    assert "log scale" in svg and "4.2s" in svg  # the value is labelled, the scale said


def test_many_points_spread_over_the_plot_and_labels_differ(tmp_path: Path) -> None:
    points = [(T0 + timedelta(days=i), 60.0 + 40 * (i % 7) + i, i % 13 != 5) for i in range(60)]
    svg = svg_chart("RPO of db/wiki", points, 26 * 3600.0)
    pixels = screenshot(svg, tmp_path, "many")
    marks = rows_of(pixels, PASS_RGB)
    assert marks and not all(y >= BOTTOM - 8 for y in marks)
    assert max(marks) - min(marks) > 15, "values that vary must not be drawn as one flat line"
    labels = re.findall(r'<text class="time"[^>]*>([^<]+)</text>', svg)
    assert len(labels) == 3 and len(set(labels)) == 3, labels


def test_old_bug_same_day_labels_and_flat_points(tmp_path: Path) -> None:
    """Three drills within one morning, seconds each, against 15m/26h objectives: the report of issue 16."""
    points = [(T0 + timedelta(minutes=m), s, True) for m, s in ((0, 3.1), (35, 2.7), (80, 4.4))]
    svg = svg_chart("RTO of media", points, 900.0)
    dom = subprocess.run([*chromium_args(tmp_path / "profile-dom"), "--dump-dom",
                          _page(tmp_path, svg).as_uri()], capture_output=True, text=True, timeout=120)
    labels = re.findall(r'<text class="time"[^>]*>([^<]+)</text>', dom.stdout)
    assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    pixels = screenshot(svg, tmp_path, "morning")
    marks = rows_of(pixels, PASS_RGB)
    assert marks and not all(y >= BOTTOM - 8 for y in marks), sorted(set(marks))
    assert all(PAD_T - 6 <= y <= BOTTOM + 6 for y in marks)  # and never off the plot


def _page(tmp_path: Path, svg: str) -> Path:
    page = tmp_path / "dom.html"
    page.write_text(f"<!DOCTYPE html><html><body>{svg}</body></html>")
    return page


def test_axis_and_labels_pure() -> None:
    axis = Axis([4.0, 5.0, 3.0], 4 * 3600.0, PAD_T, BOTTOM)
    assert axis.log and all(BOTTOM - axis(v) > 0.1 * (BOTTOM - PAD_T) for v in (3.0, 4.0, 5.0))
    assert axis(4 * 3600.0) > PAD_T  # the objective is inside the plot
    linear = Axis([300.0, 420.0], 900.0, PAD_T, BOTTOM)
    assert not linear.log and linear(0) == BOTTOM and linear.hi >= 900
    hours = Axis([80000.0, 100000.0], 93600.0, PAD_T, BOTTOM)
    assert [tick_label(t, hours.unit) for t in hours.ticks] == ["10h", "20h", "30h", "40h"]
    assert time_labels(T0, T0) == [(0.5, "2026-11-20 09:00 UTC")]
    same_day = [text for _s, text in time_labels(T0, T0 + timedelta(hours=3))]
    assert len(set(same_day)) == len(same_day) == 3
    seconds = [text for _s, text in time_labels(T0, T0 + timedelta(seconds=20))]
    assert len(set(seconds)) == 2


def test_runbook_svg_count_matches_the_report(tmp_path: Path) -> None:
    """quarterly-dr-drill.md greps the report for '<svg' and prints the expected count: two charts
    per rehearsed source, one per line, so grep -c counts charts, not lines of a one-line page."""
    text = (ROOT / "runbooks/quarterly-dr-drill.md").read_text()
    after = text.split("grep -c '<svg'", 1)[1]
    expected = int(after.split("```text", 1)[1].split("```", 1)[0].strip().splitlines()[-1])
    sources = [f"source{i}" for i in range(expected // 2)]
    docs = [synthetic("drill", T0 - timedelta(days=d), [(s, 30.0 + d, 600.0, True) for s in sources])
            for d in (1, 20, 40)]
    report = tmp_path / "dr-report.html"
    report.write_text(render_html(docs, T0, timedelta(days=90)))
    count = subprocess.run(["grep", "-c", "<svg", str(report)], capture_output=True, text=True)
    assert count.stdout.strip() == str(expected) and expected == 2 * len(sources)
