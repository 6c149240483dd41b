"""Values the commands parse and print the same way: sizes, durations, percentages."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

from drtool.api.settings import parse_duration
from drtool.errors import UsageError


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def duration_value(value: str | None, option: str) -> timedelta | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except UsageError as exc:
        raise UsageError(f"{option}: {exc}") from None


def percent_value(value: Any, option: str) -> float:
    text = str(value).strip()
    if text.lower() == "unlimited":
        return 100.0
    try:
        return float(text.removesuffix("%"))
    except ValueError:
        raise UsageError(f"{option}: expected a percentage such as 10%, got {text!r}") from None
