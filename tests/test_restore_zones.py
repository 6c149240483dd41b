"""Restores say which instant they resolved, in UTC and in the host's zone, and a time without a
zone on a host not in UTC says which zone it was read in (issue 16: TZ=America/New_York restored
another moment than the UTC one meant, silently)."""
from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conftest import DrEnv
from drtool.backup.run import backup_paths
from drtool.snapshot.timeparse import in_utc_and_host, names_zone, zone_note

UTC = dt.timezone.utc
NEW_YORK = ZoneInfo("America/New_York")


@pytest.fixture
def two_snapshots(repo_env: DrEnv, tmp_path: Path) -> tuple[DrEnv, list[str], dt.datetime]:
    """Snapshots of 'media' taken 6 h and 2 h ago (the middle of them: 4 h ago)."""
    now = dt.datetime.now(UTC).replace(microsecond=0)
    src = tmp_path / "media"
    src.mkdir()
    ids = []
    with repo_env.session() as session:
        for hours in (6, 2):
            (src / "f").write_text(f"{hours} hours ago")
            ids.append(backup_paths(session, [str(src)], "media",
                                    clock=lambda h=hours: now - dt.timedelta(hours=h)).snapshot.id)
    return repo_env, ids, now


def test_naive_time_on_a_new_york_host_names_the_zone_and_both_instants(
        two_snapshots: tuple[DrEnv, list[str], dt.datetime], tmp_path: Path) -> None:
    dr, ids, now = two_snapshots
    four_hours_ago = now - dt.timedelta(hours=4)
    wall_clock = four_hours_ago.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M:%S")  # what on-call typed
    result = dr.run("restore", "--name", "media", "--point-in-time", wall_clock, "--target",
                    str(tmp_path / "out"), env={"TZ": "America/New_York"})
    assert result.code == 0, result.err
    utc_text = four_hours_ago.isoformat().replace("+00:00", "Z")
    assert (f"drtool: note: '{wall_clock}' names no zone: read in this host's zone America/New_York "
            f"(UTC-0") in result.err and f"i.e. {utc_text} (UTC)" in result.err
    local = four_hours_ago.astimezone(NEW_YORK).isoformat()
    assert f"point in time: {utc_text} (UTC) = {local} (America/New_York)" in result.err
    assert f"restoring snapshot {ids[0][:8]}" in result.err  # the one 6 h ago, not 2 h ago
    assert (tmp_path / "out" / "media" / "f").read_text() == "6 hours ago"
    assert re.search(r"restored snapshot \w{8} \(media, taken \S+Z \(UTC\) = \S+-0[45]:00 "
                     r"\(America/New_York\)\)", result.out), result.out


def test_zone_given_or_utc_host_adds_no_note(two_snapshots: tuple[DrEnv, list[str], dt.datetime],
                                            tmp_path: Path) -> None:
    dr, _ids, now = two_snapshots
    point = (now - dt.timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    given = dr.run("restore", "--name", "media", "--point-in-time", point, "--target", str(tmp_path / "a"),
                   env={"TZ": "America/New_York"})
    assert given.code == 0 and "note:" not in given.err
    naive = (now - dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")
    in_utc = dr.run("restore", "--name", "media", "--point-in-time", naive, "--target", str(tmp_path / "b"),
                    env={"TZ": "UTC"})
    assert in_utc.code == 0 and "note:" not in in_utc.err
    assert re.search(r"point in time: \S+Z \(UTC\)\n", in_utc.err) and "America" not in in_utc.err


def test_dry_run_plan_prints_the_instant_in_utc_and_the_host_zone(
        two_snapshots: tuple[DrEnv, list[str], dt.datetime], tmp_path: Path) -> None:
    dr, ids, now = two_snapshots
    plan = dr.run("restore", "--name", "media", "--point-in-time", "-3h", "--target", str(tmp_path / "p"),
                  "--dry-run", env={"TZ": "Europe/Berlin"})
    assert plan.code == 0, plan.err
    lines = plan.out.splitlines()
    assert re.fullmatch(r"point in time: \S+Z \(UTC\) = \S+\+01:00 \(Europe/Berlin\)", lines[0]), lines
    assert lines[1].startswith(f"would restore snapshot {ids[0][:8]} (media, taken ")
    assert "(Europe/Berlin)" in lines[1] and not (tmp_path / "p").exists()
    as_json = dr.run("restore", "--name", "media", "--point-in-time", "-3h", "--target", str(tmp_path / "p"),
                     "--dry-run", "--json", env={"TZ": "Europe/Berlin"})
    doc = json.loads(as_json.out)
    assert abs(dt.datetime.fromisoformat(doc["point_in_time"]) - (now - dt.timedelta(hours=3))) \
        < dt.timedelta(minutes=5)


def test_zone_helpers_pure() -> None:
    when = dt.datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert in_utc_and_host(when, NEW_YORK) == "2026-07-01T12:00:00Z (UTC) = 2026-07-01T08:00:00-04:00 " \
                                              "(America/New_York)"
    assert in_utc_and_host(when, ZoneInfo("Etc/UTC")) == "2026-07-01T12:00:00Z (UTC)"
    assert names_zone("2026-07-01T08:00Z") and names_zone("-2h") and names_zone("now")
    assert not names_zone("2026-07-01 08:00") and not names_zone("2026-07-01")
    assert zone_note("2026-07-01 08:00", when, ZoneInfo("UTC")) is None
    note = zone_note("2026-07-01 08:00", when, NEW_YORK)
    assert note is not None and "America/New_York (UTC-04:00)" in note and "2026-07-01T12:00:00Z" in note
