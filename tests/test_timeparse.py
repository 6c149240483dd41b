"""Tests for drtool.snapshot.timeparse: every accepted form, DST edges, nonsense."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drtool.errors import UsageError
from drtool.snapshot.timeparse import (
    format_duration,
    parse_duration,
    parse_point_in_time,
    system_local_zone,
    to_iso,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# --------------------------------------------------------------------------
# parse_point_in_time: accepted forms (local zone Berlin, CET = +01:00 in Nov)
# --------------------------------------------------------------------------
ACCEPTED = [
    ("2026-11-20T14:05:00+02:00", utc(2026, 11, 20, 12, 5)),
    ("2026-11-20T14:05:00-05:00", utc(2026, 11, 20, 19, 5)),
    ("2026-11-20T14:05Z", utc(2026, 11, 20, 14, 5)),
    ("2026-11-20T14:05:30Z", utc(2026, 11, 20, 14, 5, 30)),
    ("2026-11-20T14:05:30.25Z", utc(2026, 11, 20, 14, 5, 30, 250000)),
    ("2026-11-20T14:05:30,5+00:00", utc(2026, 11, 20, 14, 5, 30, 500000)),
    ("2026-11-20t14:05z", utc(2026, 11, 20, 14, 5)),
    ("2026-11-20T14:05+0200", utc(2026, 11, 20, 12, 5)),
    ("2026-11-20T14:05+02", utc(2026, 11, 20, 12, 5)),
    ("2026-11-20 14:05 +02:00", utc(2026, 11, 20, 12, 5)),
    ("2026-11-20T14:05:00+05:30", utc(2026, 11, 20, 8, 35)),
    # no zone -> local (Berlin, CET)
    ("2026-11-20 14:05", utc(2026, 11, 20, 13, 5)),
    ("2026-11-20T14:05:07", utc(2026, 11, 20, 13, 5, 7)),
    # date only -> local midnight
    ("2026-11-20", utc(2026, 11, 19, 23, 0)),
    ("  2026-11-20  ", utc(2026, 11, 19, 23, 0)),
    ("2024-02-29", utc(2024, 2, 28, 23, 0)),
    # relative
    ("now", NOW),
    ("NOW", NOW),
    ("-90m", NOW - timedelta(minutes=90)),
    ("-2h", NOW - timedelta(hours=2)),
    ("-1d", NOW - timedelta(days=1)),
    ("-1d12h", NOW - timedelta(days=1, hours=12)),
    ("-0s", NOW),
    (" -2h ", NOW - timedelta(hours=2)),
    ("- 2h", NOW - timedelta(hours=2)),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_accepted_forms(text: str, expected: datetime) -> None:
    result = parse_point_in_time(text, local_tz=BERLIN, now=NOW)
    assert result == expected
    assert result.tzinfo is UTC


LOCAL_ZONE_CASES = [
    # (zone, text, expected UTC, why)
    (BERLIN, "2026-07-01 12:00", utc(2026, 7, 1, 10, 0), "summer time +02:00"),
    (BERLIN, "2026-01-15 12:00", utc(2026, 1, 15, 11, 0), "winter time +01:00"),
    # fall-back: 02:30 happens twice; the FIRST (CEST, +02:00) is chosen
    (BERLIN, "2026-10-25 02:30", utc(2026, 10, 25, 0, 30), "ambiguous -> first"),
    # spring-forward: 02:30 does not exist; read with the pre-jump offset
    (BERLIN, "2026-03-29 02:30", utc(2026, 3, 29, 1, 30), "gap -> pre-jump offset"),
    (BERLIN, "2026-03-29", utc(2026, 3, 28, 23, 0), "midnight before the jump"),
    (NEW_YORK, "2026-03-08 12:00", utc(2026, 3, 8, 16, 0), "EDT on DST start day"),
    (NEW_YORK, "2026-03-08 01:59", utc(2026, 3, 8, 6, 59), "EST just before jump"),
    (NEW_YORK, "2026-03-08 02:30", utc(2026, 3, 8, 7, 30), "gap -> EST offset"),
    (NEW_YORK, "2026-11-01 01:30", utc(2026, 11, 1, 5, 30), "ambiguous -> EDT"),
    (NEW_YORK, "2026-11-01", utc(2026, 11, 1, 4, 0), "midnight EDT"),
    (UTC, "2026-11-20 14:05", utc(2026, 11, 20, 14, 5), "fixed-offset zone"),
]


@pytest.mark.parametrize(("zone", "text", "expected", "why"), LOCAL_ZONE_CASES)
def test_local_zone_assumption(zone, text: str, expected: datetime, why: str) -> None:
    assert parse_point_in_time(text, local_tz=zone, now=NOW) == expected, why


def test_explicit_zone_ignores_local_tz() -> None:
    a = parse_point_in_time("2026-10-25T02:30+01:00", local_tz=BERLIN, now=NOW)
    b = parse_point_in_time("2026-10-25T02:30+01:00", local_tz=NEW_YORK, now=NOW)
    assert a == b == utc(2026, 10, 25, 1, 30)


def test_now_in_other_zone_is_normalised() -> None:
    now_berlin = NOW.astimezone(BERLIN)
    result = parse_point_in_time("-1h", now=now_berlin)
    assert result == NOW - timedelta(hours=1)
    assert result.tzinfo is UTC


# --------------------------------------------------------------------------
# future handling
# --------------------------------------------------------------------------
def test_slightly_future_is_tolerated() -> None:
    text = to_iso(NOW + timedelta(seconds=59))
    assert parse_point_in_time(text, now=NOW) == NOW + timedelta(seconds=59)


@pytest.mark.parametrize(
    "text",
    ["2026-11-21T12:02Z", "2027-01-01", "2026-11-21 14:00", "2026-11-22"],
)
def test_future_is_rejected(text: str) -> None:
    with pytest.raises(UsageError, match="is in the future"):
        parse_point_in_time(text, local_tz=BERLIN, now=NOW)


def test_local_time_later_today_in_utc_terms() -> None:
    # 12:30 Berlin = 11:30 UTC < NOW: not in the future even though 12:30 > 12:00
    assert parse_point_in_time("2026-11-21 12:30", local_tz=BERLIN, now=NOW) == utc(
        2026, 11, 21, 11, 30
    )


# --------------------------------------------------------------------------
# nonsense
# --------------------------------------------------------------------------
NONSENSE = [
    "",
    "   ",
    "yesterday-ish",
    "yesterday",
    "tomorrow",
    "2026-13-01",
    "2026-00-10",
    "2026-11-31",
    "2023-02-29",
    "0000-01-01",
    "2026-11-20T25:00",
    "2026-11-20T24:00",
    "2026-11-20T14:60",
    "2026-11-20T14:05:61",
    "2026-11-20T14",
    "2026-11-20T14:05+25:00",
    "2026-11-20T14:05+02:60",
    "2026-11-20T14:05+2",
    "2026-11-20T14:05 Europe/Berlin",
    "2026-11-20Z",
    "2026-11-20T",
    "20261120",
    "2026-W47",
    "2026-W47-5",
    "26-11-20",
    "2026/11/20",
    "20.11.2026",
    "1700000000",
    "-",
    "-2",
    "-2x",
    "-1mo",
    "-1.5h",
    "--2h",
    "+2h",
    "2h",
    "2h ago",
    "3 days ago",
    "now-1h",
    "0001-01-01T00:00+01:00",
    "-999999999d",
    "２０２６-11-20",
]


@pytest.mark.parametrize("text", NONSENSE)
def test_nonsense_is_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_point_in_time(text, local_tz=BERLIN, now=NOW)
    message = info.value.one_line()
    assert "\n" not in message
    assert info.value.exit_code == 2
    if "too far back" not in message:
        assert "2026-11-20" in message  # shows a valid example


def test_now_with_whitespace_is_accepted() -> None:
    assert parse_point_in_time("now ", now=NOW) == NOW


def test_non_string_is_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_point_in_time(None, now=NOW)  # type: ignore[arg-type]


def test_naive_now_is_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_point_in_time("now", now=datetime(2026, 1, 1))


# --------------------------------------------------------------------------
# system local zone
# --------------------------------------------------------------------------
@pytest.mark.parametrize("env", ["America/New_York", ":America/New_York"])
def test_tz_env_is_used_as_zoneinfo(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("TZ", env)
    zone = system_local_zone()
    assert isinstance(zone, ZoneInfo) and zone.key == "America/New_York"
    # DST-correct for both seasons, not a fixed offset of "today"
    assert parse_point_in_time("2026-07-01 12:00", now=NOW) == utc(2026, 7, 1, 16)
    assert parse_point_in_time("2026-01-01 12:00", now=NOW) == utc(2026, 1, 1, 17)


@pytest.mark.parametrize("env", ["Nowhere/Land", "../../etc/passwd", "CET-1CEST"])
def test_bad_tz_env_falls_back(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("TZ", env)
    zone = system_local_zone()
    assert datetime(2026, 1, 1, tzinfo=zone).utcoffset() is not None


def test_no_tz_env_uses_a_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TZ", raising=False)
    zone = system_local_zone()
    assert datetime(2026, 7, 1, tzinfo=zone).utcoffset() is not None


# --------------------------------------------------------------------------
# durations
# --------------------------------------------------------------------------
DURATIONS = [
    ("90s", timedelta(seconds=90)),
    ("15m", timedelta(minutes=15)),
    ("12h", timedelta(hours=12)),
    ("30d", timedelta(days=30)),
    ("2w", timedelta(weeks=2)),
    ("1y", timedelta(days=365)),
    ("1d12h", timedelta(days=1, hours=12)),
    ("1d 12h", timedelta(days=1, hours=12)),
    ("1y2w3d4h5m6s", timedelta(days=365 + 14 + 3, hours=4, minutes=5, seconds=6)),
    ("6s5m", timedelta(minutes=5, seconds=6)),
    (" 45s ", timedelta(seconds=45)),
    ("0s", timedelta(0)),
    ("007m", timedelta(minutes=7)),
]


@pytest.mark.parametrize(("text", "expected"), DURATIONS)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


BAD_DURATIONS = [
    "", "  ", "90", "0", "h", "1mo", "1M", "12H", "1D", "1.5h", "-5m", "+5m", "1d1d", "abc",
    "1 d x", "1d-2h", "5 minutes", "1x", "1d,2h", "99999999999999d", "٣h",
]


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_bad_duration_is_usage_error(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    assert "\n" not in info.value.one_line()


def test_bare_integer_message_suggests_units() -> None:
    with pytest.raises(UsageError, match="no unit.*90s"):
        parse_duration("90")


FORMATTED = [
    (timedelta(days=1, hours=2), "1d 2h"),
    (timedelta(seconds=45), "45s"),
    (timedelta(0), "0s"),
    (timedelta(days=30), "30d"),
    (timedelta(days=1, seconds=1), "1d 1s"),
    (timedelta(hours=1, minutes=30), "1h 30m"),
    (timedelta(seconds=1, microseconds=900000), "1s"),
    (timedelta(hours=-1), "-1h"),
]


@pytest.mark.parametrize(("td", "text"), FORMATTED)
def test_format_duration(td: timedelta, text: str) -> None:
    assert format_duration(td) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_format_parse_round_trip(seconds: int) -> None:
    td = timedelta(seconds=seconds)
    assert parse_duration(format_duration(td)) == td


# --------------------------------------------------------------------------
# to_iso
# --------------------------------------------------------------------------
ISO_CASES = [
    (utc(2026, 11, 20, 14, 5), "2026-11-20T14:05:00+00:00"),
    (utc(2026, 11, 20, 14, 5, 7, 999999), "2026-11-20T14:05:07+00:00"),
    (datetime(2026, 11, 20, 14, 5, tzinfo=BERLIN), "2026-11-20T14:05:00+01:00"),
    (datetime(2026, 7, 1, 8, 0, tzinfo=NEW_YORK), "2026-07-01T08:00:00-04:00"),
    (datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN), "2026-10-25T02:30:00+01:00"),
]


@pytest.mark.parametrize(("dt", "text"), ISO_CASES)
def test_to_iso(dt: datetime, text: str) -> None:
    assert to_iso(dt) == text


def test_to_iso_rejects_naive() -> None:
    with pytest.raises(ValueError):
        to_iso(datetime(2026, 1, 1))


@given(
    st.datetimes(
        min_value=datetime(1971, 1, 1),
        max_value=datetime(2026, 11, 1),
        timezones=st.sampled_from([UTC, BERLIN, NEW_YORK]),
    )
)
def test_to_iso_parse_round_trip(dt: datetime) -> None:
    expected = dt.replace(microsecond=0).astimezone(UTC)
    assert parse_point_in_time(to_iso(dt), local_tz=BERLIN, now=NOW) == expected
