"""Packs in an archive storage class (S3 GLACIER, DEEP_ARCHIVE): warm them, wait, then read.

A second-site copy can keep its packs in a cold class at a fraction of the
price, while config, keys, index and snapshots stay hot.  Such packs cannot
be read until the store has been asked to restore them (RestoreObject) and
has done so, which takes minutes (Expedited) to two days (DEEP_ARCHIVE,
Bulk).  Before a restore reads packs, :func:`warm` asks for every cold
one, then polls until all are readable, logging progress and an estimate
of the time left; ``--dry-run`` shows :func:`plan` instead: which packs,
how many bytes, roughly how long and what it costs.  Clock and sleep are
injected so tests need not wait.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from drtool.backends import capabilities
from drtool.repository.objects import pack_name
from drtool.repository.packfile import TREE_BLOB
from drtool.repository.repo import Repository

log = logging.getLogger("drtool")
GiB = 1024 ** 3
# Typical hours until a restore request is done, by (archive class, tier) (AWS documentation).
TYPICAL_HOURS = {("GLACIER", "Expedited"): 0.08, ("GLACIER", "Standard"): 4.0, ("GLACIER", "Bulk"): 8.0,
                 ("DEEP_ARCHIVE", "Standard"): 12.0, ("DEEP_ARCHIVE", "Bulk"): 48.0}
# Rough retrieval price (USD per GiB, per 1,000 requests), AWS us-east-1 list prices; only an order
# of magnitude for the operator, never billing.
PRICES = {("GLACIER", "Expedited"): (0.03, 10.0), ("GLACIER", "Standard"): (0.01, 0.05),
          ("GLACIER", "Bulk"): (0.0, 0.0), ("DEEP_ARCHIVE", "Standard"): (0.02, 0.10),
          ("DEEP_ARCHIVE", "Bulk"): (0.0025, 0.025)}


@dataclass
class WarmPlan:
    """Packs a read needs that are not readable now."""

    cold: list[bytes] = field(default_factory=list)      # must be requested
    warming: list[bytes] = field(default_factory=list)   # requested, not done yet
    bytes: int = 0
    storage_class: str = ""
    tier: str = ""
    days: int = 0
    checked: int = 0  # packs whose state was asked
    scope: str = "data"  # "trees": only the tree packs were checked (a restore's first step)

    @property
    def needed(self) -> int:
        return len(self.cold) + len(self.warming)

    def estimated_hours(self) -> float:
        return TYPICAL_HOURS.get((self.storage_class or "GLACIER", self.tier), 12.0) if self.needed else 0.0

    def estimated_cost(self) -> float:
        per_gib, per_thousand = PRICES.get((self.storage_class or "GLACIER", self.tier), (0.02, 0.10))
        return self.bytes / GiB * per_gib + len(self.cold) / 1000 * per_thousand

    def as_dict(self) -> dict[str, object]:
        return {"scope": self.scope, "packs_checked": self.checked, "packs_to_warm": len(self.cold),
                "packs_warming": len(self.warming), "bytes": self.bytes,
                "tier": self.tier, "days": self.days, "estimated_hours": round(self.estimated_hours(), 2),
                "estimated_cost_usd": round(self.estimated_cost(), 4),
                "packs": sorted(p.hex() for p in self.cold + self.warming)[:1000]}


def pack_sizes(repo: Repository, pack_ids: set[bytes]) -> dict[bytes, int]:
    """Bytes of each pack that hold blobs (from the index; the trailer is not counted)."""
    sizes: dict[bytes, int] = {}
    for _blob, loc in repo.index.items():
        if loc.pack_id in pack_ids:
            sizes[loc.pack_id] = max(sizes.get(loc.pack_id, 0), loc.offset + loc.length)
    return sizes


def tree_packs(repo: Repository) -> set[bytes]:
    """Packs that hold tree blobs: needed before any snapshot can even be walked."""
    return {loc.pack_id for _blob, loc in repo.index.items() if loc.blob_type == TREE_BLOB}


def plan(repo: Repository, pack_ids: Iterable[bytes]) -> WarmPlan | None:
    """Which of ``pack_ids`` are cold or warming (one HEAD each); None when nothing is ever cold."""
    cold_store = capabilities.cold_storage(repo.backend)
    if cold_store is None:
        return None
    storage_class, tier, days = cold_store.warm_profile()
    result = WarmPlan(storage_class=storage_class, tier=tier, days=days)
    wanted = set(pack_ids)
    for pack_id in sorted(wanted):
        state = cold_store.cold_state(pack_name(pack_id))
        result.checked += 1
        if state == "cold":
            result.cold.append(pack_id)
        elif state == "warming":
            result.warming.append(pack_id)
    sizes = pack_sizes(repo, set(result.cold) | set(result.warming))
    result.bytes = sum(sizes.values())
    return result


def warm(repo: Repository, pack_ids: Iterable[bytes], *, poll_seconds: float = 60.0,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         report: Callable[[str], None] = log.warning) -> WarmPlan | None:
    """Request every cold pack, then wait until all are readable; return what was needed."""
    needed = plan(repo, pack_ids)
    if needed is None or not needed.needed:
        return needed
    cold_store = capabilities.cold_storage(repo.backend)
    assert cold_store is not None
    for pack_id in needed.cold:
        cold_store.request_warm(pack_name(pack_id))
    waiting = set(needed.cold) | set(needed.warming)
    total, started = len(waiting), clock()
    report(f"{total} packs ({needed.bytes / 2**20:.0f} MiB) are in {needed.storage_class or 'archive'} "
           f"storage: restore requested ({needed.tier} tier, readable for {needed.days} days), "
           f"typically {_duration(needed.estimated_hours() * 3600)}; about ${needed.estimated_cost():.2f}")
    while True:
        waiting = {p for p in waiting if cold_store.cold_state(pack_name(p)) != "hot"}
        if not waiting:
            report(f"all {total} packs are readable after {_duration(clock() - started)}")
            return needed
        elapsed = clock() - started
        report(f"waiting for the store to restore packs: {total - len(waiting)}/{total} readable, "
               f"{_duration(elapsed)} so far, about {_duration(_left(needed, total, len(waiting), elapsed))} left")
        sleep(poll_seconds)


def _left(needed: WarmPlan, total: int, waiting: int, elapsed: float) -> float:
    """Time left: the tier's typical time until a first pack is ready, then the observed pace."""
    done = total - waiting
    if done == 0:
        return max(needed.estimated_hours() * 3600 - elapsed, 60.0)
    return elapsed / done * waiting


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
