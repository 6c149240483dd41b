"""Restic-style retention ("forget") policy evaluation.

Pure: the caller supplies the snapshot list, the clock and the calendar zone,
and gets back one :class:`Decision` per snapshot.  Deleting is someone else's
job, which keeps this logic easy to test exhaustively and to dry-run.

Semantics follow restic's ``forget``:

* snapshots are walked newest first (ties broken by id, for determinism);
* each bucket rule (last/hourly/daily/weekly/monthly/yearly) keeps the newest
  snapshot of each distinct bucket until it has used N buckets (``-1`` = no
  limit); rules count independently, so one snapshot may satisfy several;
* tags and pins keep a snapshot without consuming any bucket count, but the
  snapshot still takes part in bucket counting like any other;
* ``keep_within`` is anchored at the NEWEST snapshot (capped at ``now``), as in
  restic, so a backup job that silently stopped weeks ago does not make the
  next ``forget`` remove every snapshot that is still the last good copy.

Buckets are computed after converting each time into the explicit ``tz``.
Hourly buckets key on (local date, local hour, UTC offset): in the autumn
fall-back the wall-clock hour 02:00 occurs twice and these are two separate
hours of real time, so they are two buckets; the skipped spring hour has
no snapshots (a time given as a wall time inside it is the instant it names,
in the hour after: each time goes through UTC before ``tz``).  Weekly buckets use ISO weeks (``isocalendar``), so
2020-12-31 is in 2020-W53 and 2021-01-01 is still in 2020-W53.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta, timezone, tzinfo

from drtool.errors import UsageError
from drtool.snapshot.timeparse import format_duration, parse_duration

__all__ = [
    "Decision",
    "NOT_MATCHED",
    "RetentionPolicy",
    "SnapshotRef",
    "apply_policy",
]

NOT_MATCHED = "not matched by any rule"
UNLIMITED = -1

_COUNT_FIELDS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
_EMPTY_MESSAGE = "refusing to forget everything: give at least one --keep option"


@dataclass(frozen=True)
class RetentionPolicy:
    """What to keep; all-zero means "nothing", which apply_policy refuses."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None
    keep_tags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        # Validate here, not only in from_mapping, so CLI-built policies get
        # the same protection against "-2" or a zero window.
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"retention {name} must be an integer, got {value!r}")
            if value < UNLIMITED:
                raise UsageError(
                    f"retention {name} must be >= 0, or -1 for unlimited; got {value}"
                )
        within = self.keep_within
        if within is not None:
            if not isinstance(within, timedelta):
                raise UsageError(f"retention keep_within must be a duration, got {within!r}")
            if within <= timedelta(0):
                raise UsageError("retention keep_within must be a positive duration, e.g. 30d")
        object.__setattr__(self, "keep_tags", _normalise_tags(self.keep_tags))

    def is_empty(self) -> bool:
        return (
            all(getattr(self, name) == 0 for name in _COUNT_FIELDS)
            and self.keep_within is None
            and not self.keep_tags
        )

    def describe(self) -> str:
        """One line for dry-run output and logs, e.g. ``last 3, daily 7``."""
        parts = []
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if value:
                shown = "all" if value == UNLIMITED else str(value)
                parts.append(f"{name.removeprefix('keep_')} {shown}")
        if self.keep_within is not None:
            parts.append(f"within {format_duration(self.keep_within)}")
        parts.extend(f"tag {tag}" for tag in sorted(self.keep_tags))
        return ", ".join(parts) if parts else "nothing"

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> RetentionPolicy:
        """Build from a ``[retention]`` config table.

        Keys may use ``_`` or ``-`` (``keep-daily``); ``keep_within`` takes a
        duration string such as ``"30d"``; ``keep_tags`` a list of strings or
        one string.  Unknown keys are errors, because a misspelt key silently
        ignored would delete snapshots the operator meant to keep.
        """
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, object] = {}
        for key, value in data.items():
            name = str(key).strip().replace("-", "_")
            if name not in known:
                raise UsageError(
                    f"unknown retention key {key!r}; valid keys: {', '.join(sorted(known))}"
                )
            if name in kwargs:
                raise UsageError(f"retention key {name!r} given twice")
            kwargs[name] = _convert_value(name, value)
        return cls(**kwargs)  # type: ignore[arg-type]


def _convert_value(name: str, value: object) -> object:
    if name == "keep_within":
        if isinstance(value, timedelta) or value is None:
            return value
        if isinstance(value, str):
            return parse_duration(value)
        raise UsageError(
            f"retention keep_within must be a duration string such as '30d', got {value!r}"
        )
    if name == "keep_tags":
        if isinstance(value, str):
            return frozenset([value])
        if isinstance(value, Iterable):
            return frozenset(value)
        raise UsageError(f"retention keep_tags must be a list of tags, got {value!r}")
    return value


def _normalise_tags(tags: object) -> frozenset[str]:
    if isinstance(tags, str):
        tags = (tags,)
    if not isinstance(tags, Iterable):
        raise UsageError(f"retention keep_tags must be a list of tags, got {tags!r}")
    result = frozenset(tags)
    for tag in result:
        if not isinstance(tag, str) or not tag.strip():
            raise UsageError(f"retention keep_tags entries must be non-empty strings, got {tag!r}")
    return result


@dataclass(frozen=True)
class SnapshotRef:
    """The minimum retention needs to know about a snapshot.

    ``pinned_reason`` marks snapshots that must survive whatever the policy
    says (e.g. a PITR base backup whose log chain is still inside the window).
    """

    id: str
    time: datetime
    tags: frozenset[str] = field(default_factory=frozenset)
    pinned_reason: str | None = None

    def __post_init__(self) -> None:
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError(f"snapshot {self.id}: time must be timezone-aware")
        if not isinstance(self.tags, frozenset):
            object.__setattr__(self, "tags", frozenset(self.tags))


@dataclass(frozen=True)
class Decision:
    snapshot: SnapshotRef
    keep: bool
    reasons: tuple[str, ...]


_Bucketer = Callable[[datetime, int], object]
_Labeller = Callable[[datetime, int], str]
_Rule = tuple[str, int, _Bucketer, _Labeller]


def _hour_bucket(local: datetime, _rank: int) -> object:
    return (local.date(), local.hour, local.utcoffset())


def _bucket_rules(policy: RetentionPolicy) -> list[_Rule]:
    """(name, count, bucket key, reason label) for each active bucket rule."""
    rules: list[_Rule] = [
        ("last", policy.keep_last, lambda t, n: n, lambda t, n: f"last {n + 1}"),
        ("hourly", policy.keep_hourly, _hour_bucket,
         lambda t, n: f"hourly {t.strftime('%Y-%m-%dT%H:00')}{_offset(t)}"),
        ("daily", policy.keep_daily, lambda t, n: t.date(),
         lambda t, n: f"daily {t.date().isoformat()}"),
        ("weekly", policy.keep_weekly, lambda t, n: t.isocalendar()[:2],
         lambda t, n: "weekly {0:04d}-W{1:02d}".format(*t.isocalendar()[:2])),
        ("monthly", policy.keep_monthly, lambda t, n: (t.year, t.month),
         lambda t, n: f"monthly {t.year:04d}-{t.month:02d}"),
        ("yearly", policy.keep_yearly, lambda t, n: t.year,
         lambda t, n: f"yearly {t.year:04d}"),
    ]
    return [rule for rule in rules if rule[1] != 0]


def _offset(local: datetime) -> str:
    """``+01:00`` style offset (strftime's %z lacks the colon)."""
    text = local.strftime("%z")
    return f"{text[:3]}:{text[3:5]}" if len(text) >= 5 else text


def _sorted_newest_first(snapshots: Sequence[SnapshotRef]) -> list[SnapshotRef]:
    seen: set[str] = set()
    for snap in snapshots:
        if snap.id in seen:
            raise ValueError(f"duplicate snapshot id {snap.id!r} in retention input")
        seen.add(snap.id)
    # Sort ascending by (time, id) then reverse, so equal times order by id
    # descending — any fixed tie-break works; this one is input-order free.
    return sorted(snapshots, key=lambda s: (s.time, s.id), reverse=True)


def apply_policy(
    snapshots: Sequence[SnapshotRef],
    policy: RetentionPolicy,
    *,
    now: datetime,
    tz: tzinfo,
) -> list[Decision]:
    """Decide keep/remove for every snapshot; newest first, deterministic.

    An empty policy is an error rather than "remove all": a forgotten flag
    must never wipe a repository.
    """
    if policy.is_empty():
        raise UsageError(_EMPTY_MESSAGE)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("apply_policy needs an aware 'now'")
    ordered = _sorted_newest_first(snapshots)
    within_start = _within_start(ordered, policy, now)
    rules = _bucket_rules(policy)
    remaining = [count for _, count, _, _ in rules]
    last_bucket: list[object] = [object() for _ in rules]
    decisions: list[Decision] = []
    for rank, snap in enumerate(ordered):
        # through UTC: a time already in ``tz`` is left as it is by astimezone, even a wall time
        # that zone skipped (02:30 on a spring-forward night), which would make its own bucket
        local = snap.time.astimezone(timezone.utc).astimezone(tz)
        reasons = _fixed_reasons(snap, policy, within_start)
        for i, (_, _, bucketer, label) in enumerate(rules):
            if remaining[i] == 0:
                continue
            bucket = bucketer(local, rank)
            if bucket != last_bucket[i]:
                last_bucket[i] = bucket
                if remaining[i] > 0:
                    remaining[i] -= 1
                reasons.append(label(local, rank))
        keep = bool(reasons)
        decisions.append(Decision(snap, keep, tuple(reasons) if keep else (NOT_MATCHED,)))
    return decisions


def _within_start(
    ordered: Sequence[SnapshotRef], policy: RetentionPolicy, now: datetime
) -> datetime | None:
    """Oldest time still inside keep_within, anchored like restic (see module doc)."""
    if policy.keep_within is None or not ordered:
        return None
    anchor = min(ordered[0].time, now)
    return anchor - policy.keep_within


def _fixed_reasons(
    snap: SnapshotRef, policy: RetentionPolicy, within_start: datetime | None
) -> list[str]:
    """Reasons that do not consume bucket counts: pin, tags, keep_within."""
    reasons: list[str] = []
    if snap.pinned_reason is not None:
        reasons.append(f"pinned: {snap.pinned_reason}")
    reasons.extend(f"tag {tag}" for tag in sorted(snap.tags & policy.keep_tags))
    if within_start is not None and snap.time >= within_start:
        assert policy.keep_within is not None
        reasons.append(f"within {format_duration(policy.keep_within)}")
    return reasons
