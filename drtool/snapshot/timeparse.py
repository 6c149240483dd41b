"""Parsing and formatting of points in time and durations typed by people.

Restore and forget decisions hinge on these values, so the parser is strict:
anything it does not clearly understand is a :class:`UsageError` whose message
shows a valid example, rather than a guess that restores the wrong day.

Everything here is pure except :func:`system_local_zone`, which is consulted
only when the caller does not inject a zone; the clock is always injectable.
"""
from __future__ import annotations

import os
import re
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drtool.errors import UsageError

__all__ = [
    "FUTURE_TOLERANCE",
    "format_duration",
    "in_utc_and_host",
    "names_zone",
    "parse_duration",
    "parse_point_in_time",
    "system_local_zone",
    "to_iso",
    "zone_note",
]

#: Clock skew allowed between the caller's clock and the requested time.
FUTURE_TOLERANCE = timedelta(minutes=1)

_POINT_EXAMPLE = (
    "use ISO 8601 such as 2026-11-20T14:05:00+01:00 or 2026-11-20T13:05Z, "
    "a local time such as '2026-11-20 14:05', a date such as 2026-11-20, "
    "'now', or a relative time such as -90m, -2h, -1d"
)
_DURATION_EXAMPLE = (
    "use a number with a unit such as 90s, 15m, 12h, 30d, 2w, 1y or 1d12h "
    "(s=seconds, m=minutes, h=hours, d=days, w=weeks, y=365 days)"
)

_UNIT_SECONDS: dict[str, int] = {
    "y": 365 * 86400,
    "w": 7 * 86400,
    "d": 86400,
    "h": 3600,
    "m": 60,
    "s": 1,
}
_DURATION_RE = re.compile(r"\s*(\d+)\s*([a-z]+)\s*", re.ASCII)

_ISO_RE = re.compile(
    r"""
    (?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})
    (?:
        [T ](?P<hour>\d{2}):(?P<minute>\d{2})
        (?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,6}))?)?
        \s*(?P<zone>Z|[+-]\d{2}(?::?\d{2})?)?
    )?
    """,
    re.VERBOSE | re.IGNORECASE | re.ASCII,
)


def system_local_zone() -> tzinfo:
    """Find the machine's zone as a ZoneInfo so DST rules apply to any date.

    ``datetime.now().astimezone().tzinfo`` is a fixed offset valid only for
    today; a naive time in another season would be off by an hour.  So prefer
    ``$TZ`` and then ``/etc/localtime``, and fall back to the fixed offset.
    """
    env = os.environ.get("TZ", "").strip()
    if env:
        key = env[1:] if env.startswith(":") else env
        zone = _zone_from_key_or_file(key)
        if zone is not None:
            return zone
    zone = _zone_from_key_or_file("/etc/localtime")
    if zone is not None:
        return zone
    fallback = datetime.now().astimezone().tzinfo
    return fallback if fallback is not None else timezone.utc


def _zone_from_key_or_file(key: str) -> tzinfo | None:
    """Load a zone by IANA key or absolute tzfile path; None if unusable."""
    try:
        if not key.startswith("/"):
            return ZoneInfo(key)
        real = os.path.realpath(key)
        marker = "/zoneinfo/"
        if marker in real:
            try:
                return ZoneInfo(real.split(marker, 1)[1])
            except (ZoneInfoNotFoundError, ValueError):
                pass
        with open(real, "rb") as handle:
            return ZoneInfo.from_file(handle, key=os.path.basename(key))
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def parse_duration(text: str) -> timedelta:
    """Parse ``90s``, ``15m``, ``1d12h``, ``1d 12h`` into a timedelta.

    Bare numbers are rejected because "30" could mean days (restic's habit
    for some flags) or seconds; guessing wrong shortens a retention window.
    ``m`` is minutes here (restic uses it for months); months are not offered
    because their length varies — use ``d`` or ``w``.  Units are lower-case
    only, so ``1M`` (a month to many people) is an error, not one minute.
    """
    raw = text if isinstance(text, str) else ""
    value = raw.strip()
    if not value:
        raise UsageError(f"empty duration: {_DURATION_EXAMPLE}")
    if re.fullmatch(r"[0-9]+", value):
        raise UsageError(
            f"duration {raw.strip()!r} has no unit: write e.g. {value}s, {value}m, "
            f"{value}h or {value}d"
        )
    total = 0
    seen: set[str] = set()
    pos = 0
    while pos < len(value):
        match = _DURATION_RE.match(value, pos)
        if match is None or match.group(2) not in _UNIT_SECONDS:
            raise UsageError(f"invalid duration {raw.strip()!r}: {_DURATION_EXAMPLE}")
        unit = match.group(2)
        if unit in seen:
            raise UsageError(
                f"invalid duration {raw.strip()!r}: unit {unit!r} given twice; "
                f"{_DURATION_EXAMPLE}"
            )
        seen.add(unit)
        total += int(match.group(1)) * _UNIT_SECONDS[unit]
        pos = match.end()
    try:
        return timedelta(seconds=total)
    except OverflowError:
        raise UsageError(f"duration {raw.strip()!r} is too large") from None


def format_duration(td: timedelta) -> str:
    """Render for humans (``1d 2h``, ``45s``); round-trips via parse_duration.

    Only d/h/m/s are used so 30 days reads as ``30d`` rather than ``4w 2d``.
    Sub-second parts are truncated: retention and PITR work in seconds.
    """
    seconds = int(td.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return sign + (" ".join(parts) if parts else "0s")


def to_iso(dt: datetime) -> str:
    """ISO 8601 with an explicit numeric offset, whole seconds.

    The offset of ``dt`` is kept (convert to UTC first for storage); ``+00:00``
    is used instead of ``Z`` so every value has the same shape and parses with
    any ISO reader.  Naive datetimes are refused: they are ambiguous on disk.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("to_iso needs an aware datetime")
    return dt.replace(microsecond=0).isoformat(timespec="seconds")


def parse_point_in_time(
    text: str,
    *,
    local_tz: tzinfo | None = None,
    now: datetime | None = None,
) -> datetime:
    """Turn a user's restore/--before time into an aware UTC datetime.

    A time without zone is read in ``local_tz`` (default: the system zone),
    because that is what the operator's wall clock showed during the incident.
    DST edge cases follow PEP 495 ``fold=0``: an ambiguous autumn time means
    the FIRST occurrence (summer time); a non-existent spring time is read
    with the offset in force before the jump (02:30 → 03:30 summer time).
    Times more than a minute after ``now`` are refused: restoring "to the
    future" is always a typo (wrong year, or UTC vs local confusion).
    """
    current = _utc_now(now)
    raw = text if isinstance(text, str) else ""
    value = raw.strip()
    if not value:
        raise UsageError(f"empty point in time: {_POINT_EXAMPLE}")
    if value.lower() == "now":
        result = current
    elif value.startswith("-"):
        try:
            result = current - _relative_duration(value, raw)
        except OverflowError:
            raise UsageError(f"point in time {raw.strip()!r} is too far back") from None
    else:
        result = _parse_absolute(value, raw, local_tz)
    if result > current + FUTURE_TOLERANCE:
        raise UsageError(
            f"point in time {raw.strip()!r} ({to_iso(result)}) is in the future "
            f"(now is {to_iso(current)}); {_POINT_EXAMPLE}"
        )
    return result


def _utc_now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("injected 'now' must be an aware datetime")
    return now.astimezone(timezone.utc)


def _relative_duration(value: str, raw: str) -> timedelta:
    """Parse the part after '-', re-wording errors for point-in-time input."""
    try:
        return parse_duration(value[1:])
    except UsageError:
        raise UsageError(
            f"invalid point in time {raw.strip()!r}: {_POINT_EXAMPLE}"
        ) from None


def _parse_absolute(value: str, raw: str, local_tz: tzinfo | None) -> datetime:
    """Parse the ISO subset we accept; a regex keeps out fromisoformat oddities
    (week dates, basic format) that are more likely typos than intent."""
    bad = UsageError(f"invalid point in time {raw.strip()!r}: {_POINT_EXAMPLE}")
    match = _ISO_RE.fullmatch(value)
    if match is None:
        raise bad
    parts = match.groupdict()
    fraction = (parts["fraction"] or "").ljust(6, "0")
    try:
        naive = datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"] or 0),
            int(parts["minute"] or 0),
            int(parts["second"] or 0),
            int(fraction or 0),
        )
        zone = _fixed_zone(parts["zone"]) if parts["zone"] else None
    except ValueError:
        raise bad from None
    if zone is None:
        zone = local_tz if local_tz is not None else system_local_zone()
    aware = naive.replace(tzinfo=zone, fold=0)
    try:
        return aware.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise bad from None


def _fixed_zone(text: str) -> tzinfo:
    """``Z``, ``+02``, ``+0200`` or ``+02:00`` → fixed-offset tzinfo."""
    if text.upper() == "Z":
        return timezone.utc
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if minutes >= 60:
        raise ValueError("offset minutes out of range")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


# ----- saying which instant was meant ------------------------------------------------
#: zone keys that mean "this host keeps UTC"
UTC_KEYS = frozenset({"UTC", "Etc/UTC", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu", "UCT", "Etc/UCT",
                      "GMT", "Etc/GMT", "Etc/GMT+0", "Etc/GMT-0", "Etc/GMT0", "GMT0", "Greenwich"})


def zone_label(zone: tzinfo) -> str:
    """The IANA name when known (America/New_York), else the zone's abbreviation."""
    return str(getattr(zone, "key", None) or zone.tzname(None) or "local time")


def is_utc_zone(zone: tzinfo) -> bool:
    return zone is timezone.utc or zone_label(zone) in UTC_KEYS


def names_zone(text: str) -> bool:
    """Does this point in time say its zone?  ``now`` and relative times need none."""
    value = text.strip()
    if not value or value.lower() == "now" or value.startswith("-"):
        return True
    match = _ISO_RE.fullmatch(value)
    return match is None or bool(match.group("zone"))


def in_utc_and_host(when: datetime, zone: tzinfo | None = None) -> str:
    """``2026-11-20T19:05:00Z (UTC) = 2026-11-20T14:05:00-05:00 (America/New_York)``; the UTC part
    alone on a host that keeps UTC.  Restores print this so nobody wonders which 14:05 was meant."""
    zone = zone if zone is not None else system_local_zone()
    utc = when.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    if is_utc_zone(zone):
        return f"{utc} (UTC)"
    return f"{utc} (UTC) = {to_iso(when.astimezone(zone))} ({zone_label(zone)})"


def zone_note(text: str, when: datetime, zone: tzinfo | None = None) -> str | None:
    """When a time without a zone was read in a host zone other than UTC: which zone, and what
    it came to (None otherwise)."""
    zone = zone if zone is not None else system_local_zone()
    if names_zone(text) or is_utc_zone(zone):
        return None
    return (f"{text.strip()!r} names no zone: read in this host's zone {zone_label(zone)} "
            f"(UTC{to_iso(when.astimezone(zone))[-6:]}), i.e. {in_utc_and_host(when, zone).split(' = ')[0]}; "
            f"add Z for UTC or an offset such as +01:00 to mean another zone")
