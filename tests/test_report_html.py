"""The DR report: self-contained HTML that a real browser renders with content.

Rendered with headless Chromium (the Debian package ``chromium``; scripts/test
installs it): the DOM must name every source, say PASS/FAIL and hold SVG charts,
and the screenshot must be a real picture, checked with a tiny PNG decoder.
"""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import DrEnv
from drtool.rehearse.drill import record
from drtool.rehearse.report import render_html

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("chromium is not installed: 'apt-get install -y chromium' (scripts/test installs the "
                "Debian package); the HTML report must be checked in a real browser")


def chromium_args(profile: Path) -> list[str]:
    return [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}"]


def synthetic(runbook: str, started: datetime, steps: list[tuple[str, float, float, bool]],
              objectives: tuple[float, float] = (900.0, 93600.0)) -> dict[str, object]:
    """A rehearsal document as rehearse() records it (history for the charts)."""
    rto_goal, rpo_goal = objectives
    docs_steps = []
    for source, rto, rpo, ok in steps:
        failed = [] if ok else [f"step {source!r}: check 'the wiki has pages' failed (x.toml:9): got 0"]
        docs_steps.append({"name": source, "source": source, "series": source, "sandbox": "directory",
                           "recovery_point": "latest", "target": started.isoformat(), "snapshot": "ab" * 32,
                           "snapshot_time": started.isoformat(), "recovered_to": started.isoformat(),
                           "started": started.isoformat(), "validated": started.isoformat(),
                           "rto_seconds": rto, "rpo_seconds": rpo,
                           "objectives": {"rto": rto_goal, "rpo": rpo_goal},
                           "status": "passed" if ok else "failed", "error": None, "restored": {},
                           "checks": [], "failed": failed, "kept": None})
    status = "passed" if all(s[3] for s in steps) else "failed"
    return {"format": 1, "runbook": runbook, "runbook_path": f"runbooks/{runbook}.toml", "description": "",
            "host": "backup1", "seed": 1, "started": started.isoformat(),
            "finished": (started + timedelta(minutes=20)).isoformat(), "recovered": started.isoformat(),
            "status": status, "rto_seconds": max(s[1] for s in steps), "rpo_seconds": max(s[2] for s in steps),
            "objectives": {"rto": rto_goal, "rpo": rpo_goal},
            "failed_checks": [f for s in docs_steps for f in s["failed"]], "drill_failed": [],
            "program_version": "test", "steps": docs_steps}


@pytest.fixture
def history(repo_env: DrEnv, tmp_path: Path) -> DrEnv:
    """A real rehearsal of 'media' plus 80 days of recorded history for two sources."""
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.jpg").write_bytes(b"jpeg" * 1000)
    assert repo_env.run("backup", str(media), "--name", "media").code == 0
    runbook = tmp_path / "media.toml"
    runbook.write_text(f'source = "media"\nsandbox = {{ type = "directory", path = "{tmp_path / "sb"}" }}\n'
                       '[objectives]\nrto = "15m"\nrpo = "26h"\n')
    assert repo_env.run("rehearse", str(runbook)).code == 0
    now = datetime.now(timezone.utc)
    with repo_env.session() as session:
        for days in (80, 60, 40, 20):
            started = now - timedelta(days=days)
            ok = days != 40
            record(session, synthetic("nightly-wiki-db", started,
                                      [("db/wiki", 300 + days * 5, 20000 + days * 300, ok)]))
            record(session, synthetic("media-files", started + timedelta(hours=1),
                                      [("media", 120 + days, 30000 - days * 100, True)]))
        record(session, synthetic("nightly-wiki-db", now - timedelta(days=2),
                                  [("db/wiki", 1500, 40000, False)]))  # last one failed, RTO missed
        record(session, synthetic("too-old", now - timedelta(days=200), [("archive", 10, 10, True)]))
    return repo_env


def test_report_html_renders_in_chromium(history: DrEnv, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    result = history.run("report", "--html", str(out), "--since", "90d", "--json")
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["sources"] == ["db/wiki", "media"] and summary["rehearsals"] == 10
    html = out.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert "<link" not in html and "<img" not in html and "@import" not in html and "url(" not in html
    dom = subprocess.run([*chromium_args(tmp_path / "profile1"), "--dump-dom", out.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    text = dom.stdout
    assert "db/wiki" in text and "media" in text and "archive" not in text  # older than 90 days
    assert "PASS" in text and "FAIL" in text and "MISSED" in text
    assert text.count("<svg") == 4 and "<polyline" in text
    assert "objective 15m" in text and "25m" in text  # the failed run's RTO against 15m
    png = tmp_path / "report.png"
    shot = subprocess.run([*chromium_args(tmp_path / "profile2"), f"--screenshot={png}",
                           "--window-size=1200,900", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    assert png.stat().st_size > 20_000
    width, height, pixels = decode_png(png.read_bytes())
    assert (width, height) == (1200, 900)
    colors = {pixels[y][x] for y in range(0, height, 7) for x in range(0, width, 7)}
    assert len(colors) > 50, f"only {len(colors)} distinct colours: is the page blank?"
    white = sum(1 for y in range(0, height, 7) for x in range(0, width, 7) if pixels[y][x][:3] == (255, 255, 255))
    assert white < 0.97 * (len(range(0, height, 7)) * len(range(0, width, 7)))
    reds = [c for c in colors if c[0] > 180 and c[1] < 80 and c[2] < 80]
    greens = [c for c in colors if c[1] > 100 and c[0] < 60 and c[2] < 90]
    assert reds and greens, "expected both FAIL (red) and PASS (green) marks in the picture"


def test_report_is_pure_and_escapes(tmp_path: Path) -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
    doc = synthetic("<script>alert(1)</script>", now - timedelta(days=1), [("db/<evil>", 60, 60, False)])
    html = render_html([doc], now, timedelta(days=90))
    assert "<script>" not in html and "&lt;script&gt;" in html and "db/&lt;evil&gt;" in html
    empty = render_html([], now, timedelta(days=90))
    assert "No rehearsals were recorded" in empty


def test_report_without_history_is_still_a_page(repo_env: DrEnv, tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    result = repo_env.run("report", "--html", str(out))
    assert result.code == 0 and "0 rehearsal(s) of 0 source(s)" in result.out
    assert out.read_text().startswith("<!DOCTYPE html>")


def test_report_refuses_bad_since(repo_env: DrEnv, tmp_path: Path) -> None:
    result = repo_env.run("report", "--html", str(tmp_path / "r.html"), "--since", "90")
    assert result.code == 2 and "no unit" in result.err


# ----- a tiny PNG decoder (8-bit RGB/RGBA, non-interlaced: what Chromium writes) -----------
def decode_png(data: bytes) -> tuple[int, int, list[list[tuple[int, ...]]]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    assert header is not None
    width, height, depth, color, _c, _f, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    channels = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * channels
    rows: list[bytearray] = []
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        _unfilter(kind, line, prev, channels)
        rows.append(line)
        prev = line
    return width, height, [[tuple(r[x * channels:(x + 1) * channels]) for x in range(width)] for r in rows]


def _unfilter(kind: int, line: bytearray, prev: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    if kind == 2:
        for i in range(len(line)):
            line[i] = (line[i] + prev[i]) & 0xFF
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = prev[i]
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
        elif kind == 4:
            upleft = prev[i - bpp] if i >= bpp else 0
            p = left + up - upleft
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
            pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
            line[i] = (line[i] + pred) & 0xFF
        else:
            raise AssertionError(f"bad PNG filter {kind}")

