"""Sizes as people type them (``4096``, ``10k``, ``1.5M``, ``2GiB``: binary units), for every layer.

One parser for ``find --min-size`` and ``check --read-data-subset 50G``; the bandwidth limits
(``backends.throttle.parse_rate``) keep their own, decimal, as rates are usually given.
"""
from __future__ import annotations

from drtool.errors import UsageError

UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "m": 2**20, "mib": 2**20, "g": 2**30, "gib": 2**30,
         "t": 2**40, "tib": 2**40}


def parse_size(text: str, what: str) -> int:
    """``4096``, ``10k``, ``1.5M``, ``2GiB`` (binary units) -> bytes; a clear usage error otherwise."""
    value = text.strip().lower()
    number = value.rstrip("kmgtib")
    unit = value[len(number):]
    try:
        amount = float(number)
    except ValueError:
        amount = -1
    if amount < 0 or unit not in UNITS:
        raise UsageError(f"{what} {text!r} is not a size", hint="give bytes or a size such as 10k, 1.5M, 2G")
    return int(amount * UNITS[unit])


def size_text(amount: int) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1: ``300 KiB``, ``1.5 GiB``."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if amount >= factor:
            return f"{amount / factor:g} {unit}"
    return f"{amount} bytes"
