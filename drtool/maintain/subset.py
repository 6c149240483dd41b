"""Which packs ``check --read-data-subset`` downloads: a share, one part of a fixed partition, or a size.

Why three forms (as restic has): a random share ("5%") catches damage
somewhere over many runs but never promises to have read everything; a
part ("3/7") is chosen by the pack's id, so the same pack is always in the
same part and a weekly timer that walks 1/7 … 7/7 has read every pack that
lived through the week once, at a seventh of the egress each run; a size
("50G") bounds what one run downloads from an off-site bucket, whatever the
repository has grown to.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from drtool.errors import UsageError
from drtool.units import parse_size, size_text

_PART_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_PERCENT_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*%?\s*$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt])(?:i?b)?\s*$", re.I)  # a unit: not a percentage
_HINT = "give a percentage (5 or 2.5%), a part N/T (1/7 … 7/7), or a size (500M, 50G)"


@dataclass(frozen=True)
class DataSubset:
    """``percent`` (0 < p ≤ 100), or ``part`` of ``parts`` (1-based), or ``size`` bytes."""

    percent: float = 0.0
    part: int = 0
    parts: int = 0
    size: int = 0

    @classmethod
    def everything(cls) -> DataSubset:
        return cls(percent=100.0)

    @classmethod
    def parse(cls, text: str) -> DataSubset:
        """``5``, ``2.5%``, ``1/7``, ``500M``, ``50GiB``; a one-line usage error for anything else."""
        part = _PART_RE.match(text)
        if part:
            number, parts = int(part.group(1)), int(part.group(2))
            if parts < 1 or not 1 <= number <= parts:
                problem = "T must be at least 1" if parts < 1 else f"the part must be 1 to {parts} of {parts}"
                raise UsageError(f"--read-data-subset {text!r}: {problem}", hint=_HINT)
            return cls(part=number, parts=parts)
        size = _SIZE_RE.match(text)
        if size:
            amount = parse_size(size.group(1) + size.group(2), "--read-data-subset")
            if amount <= 0:
                raise UsageError(f"--read-data-subset {text!r}: the size must be above zero", hint=_HINT)
            return cls(size=amount)
        percent = _PERCENT_RE.match(text)
        if percent:
            value = float(percent.group(1))
            if not 0 < value <= 100:
                raise UsageError(f"--read-data-subset {text!r}: a percentage must be above 0 and at most 100",
                                 hint=_HINT)
            return cls(percent=value)
        raise UsageError(f"--read-data-subset {text!r} is not a percentage, a part or a size", hint=_HINT)

    def describe(self) -> str:
        if self.parts:
            return f"part {self.part}/{self.parts} by pack id"
        if self.size:
            return f"random packs of about {size_text(self.size)}"
        return "every pack" if self.percent >= 100 else f"a random {self.percent:g} %"

    def select(self, pack_sizes: dict[bytes, int], seed: int | None = None) -> list[bytes]:
        """The packs to read, in id order (the order they are read in)."""
        ids = sorted(pack_sizes)
        if self.parts:
            return [pack_id for pack_id in ids if in_part(pack_id, self.part, self.parts)]
        if self.size:
            order = random.Random(seed).sample(ids, len(ids))
            taken, total = [], 0
            for pack_id in order:
                if total >= self.size:
                    break
                taken.append(pack_id)
                total += pack_sizes[pack_id]
            return sorted(taken)
        if self.percent >= 100:
            return ids
        count = max(1, round(len(ids) * self.percent / 100)) if ids else 0
        return sorted(random.Random(seed).sample(ids, count))


def in_part(pack_id: bytes, part: int, parts: int) -> bool:
    """Whether a pack is in part ``part`` (1-based) of ``parts``: its id's first 8 bytes, a uniform
    number since ids are hashes, modulo ``parts``; fixed for the pack's life."""
    return int.from_bytes(pack_id[:8], "big") % parts == part - 1
