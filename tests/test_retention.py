"""Tests for drtool.snapshot.retention: restic-style forget policy."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drtool.errors import UsageError
from drtool.snapshot.retention import (
    NOT_MATCHED,
    Decision,
    RetentionPolicy,
    SnapshotRef,
    apply_policy,
)

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NOW = datetime(2030, 1, 1, tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def snaps(*times: datetime, tags: dict[int, set[str]] | None = None) -> list[SnapshotRef]:
    """Snapshots named s0, s1, ... in the order given."""
    tags = tags or {}
    return [
        SnapshotRef(f"s{i}", t, frozenset(tags.get(i, set()))) for i, t in enumerate(times)
    ]


def run(
    snapshots: list[SnapshotRef],
    policy: RetentionPolicy,
    tz: tzinfo = UTC,
    now: datetime = NOW,
) -> dict[str, tuple[str, ...]]:
    """Map id -> reasons for KEPT snapshots only."""
    decisions = apply_policy(snapshots, policy, now=now, tz=tz)
    return {d.snapshot.id: d.reasons for d in decisions if d.keep}


# --------------------------------------------------------------------------
# Table: (name, snapshots, policy, tz, expected {id: reasons} of kept ones)
# --------------------------------------------------------------------------
CASES = [
    (
        "berlin fall-back hourly: repeated 02:00 hour is two buckets",
        snaps(
            utc(2026, 10, 25, 0, 10),  # 02:10 CEST
            utc(2026, 10, 25, 0, 50),  # 02:50 CEST
            utc(2026, 10, 25, 1, 30),  # 02:30 CET (second 02:00 hour)
            utc(2026, 10, 25, 2, 30),  # 03:30 CET
        ),
        RetentionPolicy(keep_hourly=10),
        BERLIN,
        {
            "s3": ("hourly 2026-10-25T03:00+01:00",),
            "s2": ("hourly 2026-10-25T02:00+01:00",),
            "s1": ("hourly 2026-10-25T02:00+02:00",),
        },
    ),
    (
        "berlin fall-back hourly: count limits to newest buckets",
        snaps(utc(2026, 10, 25, 0, 50), utc(2026, 10, 25, 1, 30), utc(2026, 10, 25, 2, 30)),
        RetentionPolicy(keep_hourly=2),
        BERLIN,
        {"s2": ("hourly 2026-10-25T03:00+01:00",), "s1": ("hourly 2026-10-25T02:00+01:00",)},
    ),
    (
        "berlin fall-back daily: the 25-hour day is one bucket",
        snaps(
            utc(2026, 10, 24, 22, 30),  # 00:30 CEST on the 25th
            utc(2026, 10, 25, 22, 30),  # 23:30 CET on the 25th
            utc(2026, 10, 25, 23, 30),  # 00:30 CET on the 26th
        ),
        RetentionPolicy(keep_daily=5),
        BERLIN,
        {"s2": ("daily 2026-10-26",), "s1": ("daily 2026-10-25",)},
    ),
    (
        "berlin spring-forward hourly: 01:00 CET then 03:00 CEST",
        snaps(
            utc(2026, 3, 29, 0, 30),  # 01:30 CET
            utc(2026, 3, 29, 1, 10),  # 03:10 CEST
            utc(2026, 3, 29, 1, 30),  # 03:30 CEST
        ),
        RetentionPolicy(keep_hourly=5),
        BERLIN,
        {"s2": ("hourly 2026-03-29T03:00+02:00",), "s0": ("hourly 2026-03-29T01:00+01:00",)},
    ),
    (
        "berlin spring-forward daily: the 23-hour day is one bucket",
        snaps(
            utc(2026, 3, 28, 23, 30),  # 00:30 CET on the 29th
            utc(2026, 3, 29, 21, 30),  # 23:30 CEST on the 29th
            utc(2026, 3, 29, 22, 30),  # 00:30 CEST on the 30th
        ),
        RetentionPolicy(keep_daily=5),
        BERLIN,
        {"s2": ("daily 2026-03-30",), "s1": ("daily 2026-03-29",)},
    ),
    (
        "same instants, UTC days: one day",
        snaps(utc(2026, 11, 20, 3, 0), utc(2026, 11, 20, 20, 0)),
        RetentionPolicy(keep_daily=5),
        UTC,
        {"s1": ("daily 2026-11-20",)},
    ),
    (
        "same instants, New York days: two days",
        snaps(utc(2026, 11, 20, 3, 0), utc(2026, 11, 20, 20, 0)),
        RetentionPolicy(keep_daily=5),
        NEW_YORK,
        {"s1": ("daily 2026-11-20",), "s0": ("daily 2026-11-19",)},
    ),
    (
        "new york fall-back hourly: 01:30 EDT and 01:30 EST differ",
        snaps(utc(2026, 11, 1, 5, 30), utc(2026, 11, 1, 6, 30)),
        RetentionPolicy(keep_hourly=5),
        NEW_YORK,
        {"s1": ("hourly 2026-11-01T01:00-05:00",), "s0": ("hourly 2026-11-01T01:00-04:00",)},
    ),
    (
        "new york spring-forward daily",
        snaps(
            utc(2026, 3, 8, 5, 30),  # 00:30 EST on the 8th
            utc(2026, 3, 9, 3, 30),  # 23:30 EDT on the 8th
            utc(2026, 3, 9, 4, 30),  # 00:30 EDT on the 9th
        ),
        RetentionPolicy(keep_daily=5),
        NEW_YORK,
        {"s2": ("daily 2026-03-09",), "s1": ("daily 2026-03-08",)},
    ),
    (
        "leap day: daily, monthly and yearly",
        snaps(
            utc(2024, 2, 28, 12), utc(2024, 2, 29, 12), utc(2024, 3, 1, 12), utc(2023, 2, 28, 12)
        ),
        RetentionPolicy(keep_daily=2, keep_monthly=2, keep_yearly=2),
        UTC,
        {
            "s2": ("daily 2024-03-01", "monthly 2024-03", "yearly 2024"),
            "s1": ("daily 2024-02-29", "monthly 2024-02"),
            "s3": ("yearly 2023",),
        },
    ),
    (
        "ISO week 53 of 2020 spans new year",
        snaps(utc(2020, 12, 31, 12), utc(2021, 1, 1, 12), utc(2021, 1, 4, 12), utc(2020, 12, 27, 12)),
        RetentionPolicy(keep_weekly=5),
        UTC,
        {
            "s2": ("weekly 2021-W01",),
            "s1": ("weekly 2020-W53",),
            "s3": ("weekly 2020-W52",),
        },
    ),
    (
        "ISO week 53 of 2026",
        snaps(utc(2026, 12, 31, 12), utc(2027, 1, 3, 12), utc(2027, 1, 4, 12)),
        RetentionPolicy(keep_weekly=5),
        UTC,
        {"s2": ("weekly 2027-W01",), "s1": ("weekly 2026-W53",)},
    ),
    (
        "week bucket uses local zone: Sunday night in New York is Monday UTC",
        snaps(utc(2026, 11, 23, 2, 0), utc(2026, 11, 22, 20, 0)),  # both Sun 22nd in NY
        RetentionPolicy(keep_weekly=5),
        NEW_YORK,
        {"s0": ("weekly 2026-W47",)},
    ),
    (
        "keep-last combined with daily",
        snaps(
            utc(2026, 11, 18, 6), utc(2026, 11, 18, 18),
            utc(2026, 11, 19, 6), utc(2026, 11, 19, 18),
            utc(2026, 11, 20, 6), utc(2026, 11, 20, 18),
        ),
        RetentionPolicy(keep_last=2, keep_daily=2),
        UTC,
        {"s5": ("last 1", "daily 2026-11-20"), "s4": ("last 2",), "s3": ("daily 2026-11-19",)},
    ),
    (
        "yearly across years, zone moves new-year's-eve into next year",
        snaps(
            utc(2023, 12, 1), utc(2024, 6, 1), utc(2024, 12, 31, 23, 30), utc(2025, 1, 15)
        ),
        RetentionPolicy(keep_yearly=2),
        BERLIN,
        {"s3": ("yearly 2025",), "s1": ("yearly 2024",)},
    ),
    (
        "yearly across years in UTC",
        snaps(utc(2023, 12, 1), utc(2024, 6, 1), utc(2024, 12, 31, 23, 30), utc(2025, 1, 15)),
        RetentionPolicy(keep_yearly=2),
        UTC,
        {"s3": ("yearly 2025",), "s2": ("yearly 2024",)},
    ),
    (
        "monthly with -1 keeps every month",
        snaps(utc(2026, 1, 5), utc(2026, 1, 20), utc(2026, 2, 5), utc(2025, 7, 1)),
        RetentionPolicy(keep_monthly=-1),
        UTC,
        {"s1": ("monthly 2026-01",), "s2": ("monthly 2026-02",), "s3": ("monthly 2025-07",)},
    ),
    (
        "keep-last -1 keeps all",
        snaps(utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 3)),
        RetentionPolicy(keep_last=-1),
        UTC,
        {"s2": ("last 1",), "s1": ("last 2",), "s0": ("last 3",)},
    ),
    (
        "daily -1 keeps newest per day, forever",
        snaps(utc(2020, 1, 1, 1), utc(2020, 1, 1, 2), utc(2026, 1, 1, 1)),
        RetentionPolicy(keep_daily=-1),
        UTC,
        {"s2": ("daily 2026-01-01",), "s1": ("daily 2020-01-01",)},
    ),
    (
        "keep-tag keeps old tagged snapshots, not counted in last",
        snaps(
            utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 3), utc(2026, 1, 4),
            tags={0: {"release"}, 1: {"other"}, 3: {"release", "weekly"}},
        ),
        RetentionPolicy(keep_last=1, keep_tags=frozenset({"release"})),
        UTC,
        {"s3": ("tag release", "last 1"), "s0": ("tag release",)},
    ),
    (
        "tags alone are a valid policy",
        snaps(utc(2026, 1, 1), utc(2026, 1, 2), tags={0: {"a", "b"}}),
        RetentionPolicy(keep_tags=frozenset({"b", "a"})),
        UTC,
        {"s0": ("tag a", "tag b")},
    ),
]


@pytest.mark.parametrize(
    ("name", "snapshots", "policy", "tz", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_policy_table(name, snapshots, policy, tz, expected) -> None:
    assert run(snapshots, policy, tz) == expected


def test_removed_reason_and_order() -> None:
    snapshots = snaps(utc(2026, 1, 2), utc(2026, 1, 3), utc(2026, 1, 1))
    decisions = apply_policy(snapshots, RetentionPolicy(keep_last=1), now=NOW, tz=UTC)
    assert [d.snapshot.id for d in decisions] == ["s1", "s0", "s2"]
    assert decisions[0] == Decision(snapshots[1], True, ("last 1",))
    assert decisions[1].reasons == (NOT_MATCHED,) and not decisions[1].keep
    assert decisions[2].reasons == ("not matched by any rule",)


def test_pinned_is_kept_and_still_counts_in_buckets() -> None:
    old = SnapshotRef("base", utc(2025, 1, 1), pinned_reason="pitr base for db1")
    newer = SnapshotRef("new", utc(2025, 1, 1, 1))
    newest = SnapshotRef("newest", utc(2026, 1, 1))
    kept = run([old, newer, newest], RetentionPolicy(keep_last=1, keep_daily=1))
    assert kept == {"newest": ("last 1", "daily 2026-01-01"), "base": ("pinned: pitr base for db1",)}


def test_pinned_newest_consumes_last_slot_like_restic() -> None:
    pinned = SnapshotRef("p", utc(2026, 1, 2), pinned_reason="x")
    other = SnapshotRef("o", utc(2026, 1, 1))
    assert run([pinned, other], RetentionPolicy(keep_last=1)) == {"p": ("pinned: x", "last 1")}


# --------------------------------------------------------------------------
# keep_within
# --------------------------------------------------------------------------
def test_keep_within_relative_to_now() -> None:
    now = utc(2026, 11, 21, 12)
    s = snaps(now - timedelta(days=31), now - timedelta(days=30), now - timedelta(hours=1))
    kept = run(s, RetentionPolicy(keep_within=timedelta(days=30)), now=now)
    assert kept == {"s2": ("within 30d",), "s1": ("within 30d",)}  # boundary inclusive


def test_keep_within_anchored_at_newest_snapshot_when_backups_stopped() -> None:
    now = utc(2026, 11, 21, 12)
    newest = now - timedelta(days=60)
    s = snaps(newest - timedelta(days=3), newest - timedelta(days=1), newest)
    kept = run(s, RetentionPolicy(keep_within=timedelta(days=2)), now=now)
    assert kept == {"s2": ("within 2d",), "s1": ("within 2d",)}


def test_keep_within_future_snapshot_does_not_shrink_window() -> None:
    now = utc(2026, 11, 21, 12)
    s = snaps(now - timedelta(hours=20), now + timedelta(days=5))  # clock-skewed host
    kept = run(s, RetentionPolicy(keep_within=timedelta(days=1)), now=now)
    assert set(kept) == {"s0", "s1"}


def test_keep_within_with_compound_duration_label() -> None:
    s = snaps(utc(2026, 1, 1))
    kept = run(s, RetentionPolicy(keep_within=timedelta(days=1, hours=12)))
    assert kept == {"s0": ("within 1d 12h",)}


# --------------------------------------------------------------------------
# errors and edge inputs
# --------------------------------------------------------------------------
def test_empty_policy_refuses() -> None:
    with pytest.raises(UsageError, match="refusing to forget everything") as info:
        apply_policy(snaps(utc(2026, 1, 1)), RetentionPolicy(), now=NOW, tz=UTC)
    assert info.value.exit_code == 2
    assert RetentionPolicy().is_empty()


def test_empty_policy_refuses_even_with_no_snapshots() -> None:
    with pytest.raises(UsageError):
        apply_policy([], RetentionPolicy(), now=NOW, tz=UTC)


def test_no_snapshots() -> None:
    assert apply_policy([], RetentionPolicy(keep_last=1), now=NOW, tz=UTC) == []


def test_duplicate_ids_rejected() -> None:
    s = [SnapshotRef("a", utc(2026, 1, 1)), SnapshotRef("a", utc(2026, 1, 2))]
    with pytest.raises(ValueError):
        apply_policy(s, RetentionPolicy(keep_last=1), now=NOW, tz=UTC)


def test_naive_times_rejected() -> None:
    with pytest.raises(ValueError):
        SnapshotRef("a", datetime(2026, 1, 1))
    with pytest.raises(ValueError):
        apply_policy([], RetentionPolicy(keep_last=1), now=datetime(2026, 1, 1), tz=UTC)


def test_equal_times_tie_break_by_id() -> None:
    t = utc(2026, 1, 1)
    s = [SnapshotRef("aaa", t), SnapshotRef("bbb", t)]
    assert run(s, RetentionPolicy(keep_last=1)) == {"bbb": ("last 1",)}
    assert run(s[::-1], RetentionPolicy(keep_last=1)) == {"bbb": ("last 1",)}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_last": -2},
        {"keep_daily": -5},
        {"keep_hourly": True},
        {"keep_weekly": 1.5},
        {"keep_monthly": "3"},
        {"keep_within": timedelta(0)},
        {"keep_within": timedelta(seconds=-1)},
        {"keep_within": "30d"},
        {"keep_tags": frozenset({""})},
        {"keep_tags": frozenset({3})},
    ],
)
def test_invalid_policy_values(kwargs) -> None:
    with pytest.raises(UsageError):
        RetentionPolicy(**kwargs)


# --------------------------------------------------------------------------
# from_mapping and describe
# --------------------------------------------------------------------------
def test_from_mapping_full() -> None:
    policy = RetentionPolicy.from_mapping(
        {
            "keep-last": 3,
            "keep_hourly": 24,
            "keep-daily": 7,
            "keep_weekly": 4,
            "keep_monthly": -1,
            "keep_yearly": 0,
            "keep_within": "1d12h",
            "keep_tags": ["release", "golden"],
        }
    )
    assert policy == RetentionPolicy(
        keep_last=3,
        keep_hourly=24,
        keep_daily=7,
        keep_weekly=4,
        keep_monthly=-1,
        keep_within=timedelta(days=1, hours=12),
        keep_tags=frozenset({"release", "golden"}),
    )
    assert policy.describe() == (
        "last 3, hourly 24, daily 7, weekly 4, monthly all, within 1d 12h, tag golden, tag release"
    )


def test_from_mapping_single_tag_string_and_timedelta() -> None:
    policy = RetentionPolicy.from_mapping({"keep_tags": "release", "keep_within": timedelta(days=3)})
    assert policy.keep_tags == frozenset({"release"})
    assert policy.keep_within == timedelta(days=3)


def test_from_mapping_empty_is_empty_policy() -> None:
    assert RetentionPolicy.from_mapping({}).is_empty()
    assert RetentionPolicy().describe() == "nothing"


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        ({"keep_dayly": 7}, "keep_dayly"),
        ({"keep-lst": 1}, "keep-lst"),
        ({"keep_last": -2}, "keep_last"),
        ({"keep_last": "3"}, "integer"),
        ({"keep_last": True}, "integer"),
        ({"keep_within": "30"}, "no unit"),
        ({"keep_within": "0s"}, "positive"),
        ({"keep_within": 30}, "duration"),
        ({"keep_tags": 5}, "list of tags"),
        ({"keep_tags": [""]}, "non-empty"),
        ({"keep_last": 1, "keep-last": 2}, "twice"),
    ],
)
def test_from_mapping_errors(mapping, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        RetentionPolicy.from_mapping(mapping)


# --------------------------------------------------------------------------
# hypothesis properties
# --------------------------------------------------------------------------
ZONES = [UTC, BERLIN, NEW_YORK, ZoneInfo("Asia/Kolkata"), ZoneInfo("Australia/Lord_Howe")]
TAGS = ["release", "golden", "daily"]


@st.composite
def snapshot_lists(draw) -> list[SnapshotRef]:
    times = draw(
        st.lists(
            st.datetimes(
                min_value=datetime(2019, 1, 1),
                max_value=datetime(2027, 1, 1),
                timezones=st.sampled_from([UTC, BERLIN]),
            ),
            max_size=40,
        )
    )
    result = []
    for i, t in enumerate(times):
        tags = draw(st.frozensets(st.sampled_from(TAGS), max_size=2))
        pinned = draw(st.sampled_from([None, None, None, "pitr base"]))
        result.append(SnapshotRef(f"id{i:03d}", t, tags, pinned))
    return result


counts = st.integers(min_value=-1, max_value=6)
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=st.none()
    | st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=400)),
    keep_tags=st.frozensets(st.sampled_from(TAGS), max_size=2),
).filter(lambda p: not p.is_empty())


@settings(max_examples=300)
@given(snapshot_lists(), policies, st.sampled_from(ZONES))
def test_partition_and_reasons(snapshots, policy, tz) -> None:
    decisions = apply_policy(snapshots, policy, now=NOW, tz=tz)
    assert sorted(d.snapshot.id for d in decisions) == sorted(s.id for s in snapshots)
    kept = {d.snapshot.id for d in decisions if d.keep}
    removed = {d.snapshot.id for d in decisions if not d.keep}
    assert kept.isdisjoint(removed) and kept | removed == {s.id for s in snapshots}
    for d in decisions:
        assert d.reasons and (NOT_MATCHED in d.reasons) == (not d.keep)
    times = [d.snapshot.time for d in decisions]
    assert times == sorted(times, reverse=True)


@settings(max_examples=200)
@given(snapshot_lists(), policies, st.sampled_from(ZONES))
def test_keep_last_keeps_newest(snapshots, policy, tz) -> None:
    decisions = apply_policy(snapshots, policy, now=NOW, tz=tz)
    n = len(decisions) if policy.keep_last == -1 else policy.keep_last
    assert all(d.keep for d in decisions[:n])
    n_last = sum(r.startswith("last ") for d in decisions for r in d.reasons)
    assert n_last == min(n, len(decisions))


@settings(max_examples=200)
@given(snapshot_lists(), policies, st.sampled_from(ZONES))
def test_never_removes_pinned_or_tagged(snapshots, policy, tz) -> None:
    for d in apply_policy(snapshots, policy, now=NOW, tz=tz):
        if d.snapshot.pinned_reason is not None or d.snapshot.tags & policy.keep_tags:
            assert d.keep


@settings(max_examples=200)
@given(snapshot_lists(), policies, st.sampled_from(ZONES), st.randoms(use_true_random=False))
def test_independent_of_input_order(snapshots, policy, tz, rnd) -> None:
    shuffled = list(snapshots)
    rnd.shuffle(shuffled)
    assert apply_policy(snapshots, policy, now=NOW, tz=tz) == apply_policy(
        shuffled, policy, now=NOW, tz=tz
    )


@settings(max_examples=200)
@given(snapshot_lists(), st.integers(min_value=-1, max_value=8), st.sampled_from(ZONES))
def test_daily_matches_oracle(snapshots, n, tz) -> None:
    """Independent model: newest snapshot of each of the N newest local days."""
    policy = RetentionPolicy(keep_daily=n) if n else RetentionPolicy(keep_last=1)
    newest_per_day: dict[object, SnapshotRef] = {}
    for s in snapshots:
        day = s.time.astimezone(tz).date()
        best = newest_per_day.get(day)
        if best is None or (s.time, s.id) > (best.time, best.id):
            newest_per_day[day] = s
    days = sorted(newest_per_day, reverse=True)
    chosen = days if n == -1 else days[:n]
    expected = {newest_per_day[d].id for d in chosen}
    decisions = apply_policy(snapshots, policy, now=NOW, tz=tz)
    got = {d.snapshot.id for d in decisions if any(r.startswith("daily ") for r in d.reasons)}
    assert got == expected


def test_a_wall_time_the_zone_skipped_is_bucketed_by_its_real_hour() -> None:
    """02:00 in Berlin on 29 March 2026 never happened (clocks went to 03:00): as an aware time it
    is 01:00 UTC, the same instant as 03:00 CEST, so one hourly bucket keeps one of the two
    (found by the property test below: the skipped wall time had made a bucket of its own)."""
    skipped, after = datetime(2026, 3, 29, 2, 0, tzinfo=BERLIN), datetime(2026, 3, 29, 3, 0, tzinfo=BERLIN)
    assert skipped.astimezone(UTC) == after.astimezone(UTC)
    decisions = apply_policy(snaps(skipped, after), RetentionPolicy(keep_hourly=-1), now=NOW, tz=BERLIN)
    assert sum(any(r.startswith("hourly ") for r in d.reasons) for d in decisions) == 1


@settings(max_examples=200)
@given(snapshot_lists(), st.sampled_from([UTC, BERLIN, NEW_YORK]))
def test_hourly_buckets_are_real_hours_in_whole_hour_zones(snapshots, tz) -> None:
    """In whole-hour zones, (wall hour, offset) buckets == real (UTC) hours."""
    decisions = apply_policy(snapshots, RetentionPolicy(keep_hourly=-1), now=NOW, tz=tz)

    def hour(t: datetime) -> datetime:
        return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    hourly = [
        hour(d.snapshot.time)
        for d in decisions
        if any(r.startswith("hourly ") for r in d.reasons)
    ]
    assert len(hourly) == len(set(hourly)) == len({hour(s.time) for s in snapshots})
