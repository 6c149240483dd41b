"""Sharded sources: ``shards = N`` splits one source into N parts backed up by many workers.

A source with ``shards = N`` (object stores and file trees) is backed up as
a *snapshot set*: one snapshot per shard, each in its own series
``NAME/shard-007-of-256`` (so its parent is the same shard's previous
snapshot and incrementality works per shard), all carrying
``meta["set"] = {"id", "source", "shard", "shards", "time"}``.

Which shard a key belongs to is a stable hash (BLAKE2b, not Python's
salted ``hash``) of its *unit*: for an object store the first
``shard_depth`` path components below the prefix (``a/`` or ``a/ab/``,
or the object itself when it sits higher), for a file tree the top-level
entry under each backup path.  Units keep the listing cheap: a worker lists
the unit level with a delimiter and then only its own units' prefixes,
instead of every worker listing the whole bucket.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drtool.digests import blake2b
from drtool.errors import ConfigError
from drtool.snapshot.names import like_literal

SHARD_KEYS = frozenset({"shards", "shard_depth", "lease_seconds"})
MAX_SHARDS = 4096
MAX_DEPTH = 4
#: A lease not renewed for this long is taken over by another worker.  The holder renews it
#: every fifth of that (60 s), so a worker must be stuck for minutes before it loses a shard;
#: a dead worker's shard waits at most this long.  Same order as the repository locks' 5 minutes.
DEFAULT_LEASE_SECONDS = 300.0
MIN_LEASE_SECONDS = 1.0


@dataclass(frozen=True)
class Sharding:
    """How a source is split: ``shards`` parts, units ``depth`` components deep, lease length."""

    shards: int
    depth: int = 1
    lease_seconds: float = DEFAULT_LEASE_SECONDS

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 5


def sharding_from_table(name: str, table: dict[str, Any]) -> Sharding | None:
    """``shards``/``shard_depth``/``lease_seconds`` of ``[sources.NAME]``; None when not sharded."""
    if "shards" not in table:
        if set(table) & (SHARD_KEYS - {"shards"}):
            raise ConfigError(f"[sources.{name}]: shard_depth and lease_seconds need shards = N")
        return None
    shards = table["shards"]
    if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
        raise ConfigError(f"[sources.{name}]: shards must be a whole number from 1 to {MAX_SHARDS}")
    depth = table.get("shard_depth", 1)
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= MAX_DEPTH:
        raise ConfigError(f"[sources.{name}]: shard_depth must be a whole number from 1 to {MAX_DEPTH}")
    lease = table.get("lease_seconds", DEFAULT_LEASE_SECONDS)
    if not isinstance(lease, (int, float)) or isinstance(lease, bool) or lease < MIN_LEASE_SECONDS:
        raise ConfigError(f"[sources.{name}]: lease_seconds must be a number of seconds >= "
                          f"{MIN_LEASE_SECONDS:g} (default {DEFAULT_LEASE_SECONDS:g})")
    return Sharding(shards, depth, float(lease))


def shard_of(unit: str | bytes, shards: int) -> int:
    """The shard of a unit: the same on every host, in every process, in every version."""
    data = unit if isinstance(unit, bytes) else unit.encode("utf-8", "surrogateescape")
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big") % shards


def shard_series(name: str, shard: int, shards: int) -> str:
    """The series of one shard: its snapshots' parents are its own previous snapshots.

    The shard count is in the name: changing ``shards`` moves keys between
    shards, so the new series start afresh rather than compare against
    another shard's parent (that would fetch everything anyway).
    """
    width = len(str(shards - 1))
    return f"{name}/shard-{shard:0{width}d}-of-{shards}"


def shard_series_like(name: str) -> str:
    """A SQL LIKE pattern (escape ``\\``) matching every shard series of ``name``, whatever the
    shard count: ``find --name NAME`` of a sharded source searches all its shards."""
    return f"{like_literal(name)}/shard-%-of-%"


def set_meta(set_id: str, source: str, shard: int, shards: int, time_iso: str) -> dict[str, Any]:
    """What a shard's snapshot records of its set (the repository's record of the set)."""
    return {"id": set_id, "source": source, "shard": shard, "shards": shards, "time": time_iso}
