"""Snapshot sets and shard leases in the shared catalog (tables of migration 0006).

Workers on many hosts coordinate through these rows only; they never talk
to each other.  A *lease* is a shard row in state ``leased`` with an owner,
a random token and an expiry; the holder renews it (heartbeat) and every
write that ends it names the token, so a worker that lost its lease (stuck
past the expiry, then overtaken) can never finish or release a shard it no
longer holds.

* PostgreSQL (and other servers): ``SELECT ... FOR UPDATE SKIP LOCKED``
  picks a claimable row that no other transaction is claiming, so N workers
  claiming at once get N different shards without waiting on each other.
  Times are the database server's clock (one clock for all hosts).
* SQLite (one host): one ``UPDATE ... WHERE shard = (SELECT ... LIMIT 1)``
  statement, atomic under SQLite's single writer; times are the host's clock.

Claimable: ``todo``, or ``leased`` with an expiry in the past (its holder is
dead or stuck).  A set commits when no shard is left that is not ``done``.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, and_, func, insert, not_, or_, select, update
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

from drtool.catalog.models import shard_lease_table as L
from drtool.catalog.models import snapshot_set_table as S
from drtool.catalog.store import Catalog
from drtool.errors import CatalogError, ConfigError

MAX_ERRORS = 3  # a shard failing this often fails its set (a dead worker does not count: that is an expiry)


@dataclass(frozen=True)
class SetRow:
    id: str
    source: str
    shards: int
    state: str
    created: datetime
    finished: datetime | None
    host: str
    note: str


@dataclass(frozen=True)
class Lease:
    set_id: str
    shard: int
    token: str
    owner: str
    attempt: int


@dataclass(frozen=True)
class Progress:
    """Shard counts of a set by state, and the earliest expiry among the leases others hold."""

    todo: int
    leased: int
    done: int
    failed: int
    next_expiry_in: float | None  # seconds until the first held lease could be taken over

    @property
    def total(self) -> int:
        return self.todo + self.leased + self.done + self.failed


def new_set_id() -> str:
    return "set-" + secrets.token_hex(8)


class ShardSets:
    """The set and lease rows of one repository in one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.engine, self.repo_id = catalog.engine, catalog.repo_id
        self.sqlite = self.engine.dialect.name == "sqlite"

    # ----- sets ------------------------------------------------------------------------------
    def open_set(self, source: str, shards: int, host: str, join_only: bool = False,
                 since: datetime | None = None) -> SetRow | None:
        """The open set of ``source``, or a new one (None with ``join_only`` and none open).

        Two hosts opening at once: the partial unique index lets one insert
        win; the other's insert fails and it joins the winner's set.  A set
        committed at or after ``since`` (when the worker's process started)
        is returned instead of opening a new one: a host that started with
        the others but came late finds the night's work done, rather than
        starting all of it again alone.
        """
        for _attempt in range(3):
            row = self._open_row(source)
            if row is None and since is not None:
                done = [r for r in self.sets(source) if r.state == "committed" and r.finished is not None
                        and r.finished >= since]
                if done:
                    return done[-1]
            if row is not None:
                if row.shards != shards:
                    raise ConfigError(f"the open snapshot set {row.id} of {source} has {row.shards} shards, "
                                      f"the config says {shards}",
                                      hint="finish that set with the old setting first, or "
                                           f"'drtool backup --source {source} --abandon-set'")
                return row
            if join_only:
                return None
            try:
                return self._insert_set(source, shards, host)
            except IntegrityError:
                continue  # another worker opened it first: join that one
        raise CatalogError(f"could not open or join a snapshot set of {source}")

    def _open_row(self, source: str) -> SetRow | None:
        with self._connect() as conn:
            row = conn.execute(select(S).where(S.c.repo_id == self.repo_id, S.c.source == source,
                                               S.c.state == "open")).first()
        return _set_row(row) if row is not None else None

    def _insert_set(self, source: str, shards: int, host: str) -> SetRow:
        set_id = new_set_id()
        now = datetime.now(timezone.utc)
        with self._begin() as conn:
            conn.execute(insert(S), [{"repo_id": self.repo_id, "id": set_id, "source": source, "shards": shards,
                                      "state": "open", "created": now, "host": host, "note": ""}])
            conn.execute(insert(L), [{"repo_id": self.repo_id, "set_id": set_id, "shard": i, "state": "todo",
                                      "attempts": 0, "errors": 0, "error": ""} for i in range(shards)])
        return SetRow(set_id, source, shards, "open", now, None, host, "")

    def sets(self, source: str | None = None) -> list[SetRow]:
        query = select(S).where(S.c.repo_id == self.repo_id).order_by(S.c.created)
        if source is not None:
            query = query.where(S.c.source == source)
        with self._connect() as conn:
            return [_set_row(r) for r in conn.execute(query)]

    def get_set(self, set_id: str) -> SetRow | None:
        with self._connect() as conn:
            row = conn.execute(select(S).where(S.c.repo_id == self.repo_id, S.c.id == set_id)).first()
        return _set_row(row) if row is not None else None

    def end_set(self, set_id: str, state: str, note: str = "") -> bool:
        """Mark an open set failed (or abandoned by hand); True if it was open."""
        with self._begin() as conn:
            res = conn.execute(update(S).where(S.c.repo_id == self.repo_id, S.c.id == set_id, S.c.state == "open")
                               .values(state=state, finished=datetime.now(timezone.utc), note=note))
            return bool(res.rowcount)

    def try_commit(self, set_id: str) -> bool:
        """Commit the set if every shard is done; True only for the one caller that committed it."""
        pending = select(L.c.shard).where(L.c.repo_id == self.repo_id, L.c.set_id == set_id,
                                          L.c.state != "done").exists()
        with self._begin() as conn:
            res = conn.execute(update(S).where(S.c.repo_id == self.repo_id, S.c.id == set_id,
                                               S.c.state == "open", not_(pending))
                               .values(state="committed", finished=datetime.now(timezone.utc)))
            return bool(res.rowcount)

    # ----- leases ----------------------------------------------------------------------------
    def claim(self, set_id: str, owner: str, lease_seconds: float) -> Lease | None:
        """Take one claimable shard of an open set (the lowest number), or None."""
        token = secrets.token_hex(16)
        with self._begin() as conn:
            now = self._now(conn)
            claimable = and_(L.c.repo_id == self.repo_id, L.c.set_id == set_id,
                             or_(L.c.state == "todo", and_(L.c.state == "leased", L.c.expires < now)))
            is_open = select(S.c.id).where(S.c.repo_id == self.repo_id, S.c.id == set_id,
                                           S.c.state == "open").exists()
            values = {"state": "leased", "owner": owner, "token": token, "expires": now + lease_seconds,
                      "attempts": L.c.attempts + 1}
            if self.sqlite:  # one statement: atomic under SQLite's single writer
                first = select(L.c.shard).where(claimable).order_by(L.c.shard).limit(1).scalar_subquery()
                conn.execute(update(L).where(claimable, is_open, L.c.shard == first).values(**values))
            else:
                shard = conn.execute(select(L.c.shard).where(claimable, is_open).order_by(L.c.shard).limit(1)
                                     .with_for_update(skip_locked=True)).scalar()
                if shard is None:
                    return None
                conn.execute(update(L).where(L.c.repo_id == self.repo_id, L.c.set_id == set_id,
                                             L.c.shard == shard).values(**values))
            row = conn.execute(select(L.c.shard, L.c.attempts).where(
                L.c.repo_id == self.repo_id, L.c.set_id == set_id, L.c.token == token)).first()
        return Lease(set_id, int(row[0]), token, owner, int(row[1])) if row is not None else None

    def renew(self, lease: Lease, lease_seconds: float) -> bool:
        """Push the expiry forward; False when the lease is no longer ours (taken over)."""
        with self._begin() as conn:
            now = self._now(conn)
            res = conn.execute(update(L).where(*self._mine(lease)).values(expires=now + lease_seconds))
            return bool(res.rowcount)

    def holds(self, lease: Lease) -> bool:
        """Still ours and not expired (checked just before a shard's snapshot is written)."""
        with self._begin() as conn:
            now = self._now(conn)
            expires = conn.execute(select(L.c.expires).where(*self._mine(lease))).scalar()
        return expires is not None and expires > now

    def finish(self, lease: Lease, snapshot_id: str) -> bool:
        """Record the shard's snapshot; False if the lease was lost meanwhile."""
        with self._begin() as conn:
            res = conn.execute(update(L).where(*self._mine(lease))
                               .values(state="done", snapshot_id=snapshot_id, expires=None, error=""))
            return bool(res.rowcount)

    def release(self, lease: Lease, error: str) -> bool:
        """Give a shard back after an error; the set fails at MAX_ERRORS. True if the set failed."""
        with self._begin() as conn:
            errors = conn.execute(select(L.c.errors).where(*self._mine(lease))).scalar()
            if errors is None:
                return False  # not ours any more
            failed = errors + 1 >= MAX_ERRORS
            conn.execute(update(L).where(*self._mine(lease)).values(
                state="failed" if failed else "todo", owner=None, token=None, expires=None,
                errors=errors + 1, error=error[:2000]))
        if failed:
            self.end_set(lease.set_id, "failed", f"shard {lease.shard} failed {MAX_ERRORS} times: {error[:500]}")
        return failed

    def progress(self, set_id: str) -> Progress:
        with self._connect() as conn:
            now = self._now(conn)
            rows = conn.execute(select(L.c.state, func.count(), func.min(L.c.expires))
                                .where(L.c.repo_id == self.repo_id, L.c.set_id == set_id)
                                .group_by(L.c.state)).all()
        counts = {state: int(count) for state, count, _e in rows}
        expiry = next((e for state, _c, e in rows if state == "leased" and e is not None), None)
        return Progress(counts.get("todo", 0), counts.get("leased", 0), counts.get("done", 0),
                        counts.get("failed", 0), None if expiry is None else max(0.0, expiry - now))

    def shards(self, set_id: str) -> list[dict[str, Any]]:
        """Every shard row of a set (for status output and tests)."""
        with self._connect() as conn:
            rows = conn.execute(select(L).where(L.c.repo_id == self.repo_id, L.c.set_id == set_id)
                                .order_by(L.c.shard))
            return [dict(r._mapping) for r in rows]

    # ----- plumbing --------------------------------------------------------------------------
    def _mine(self, lease: Lease) -> tuple[Any, ...]:
        return (L.c.repo_id == self.repo_id, L.c.set_id == lease.set_id, L.c.shard == lease.shard,
                L.c.token == lease.token, L.c.state == "leased")

    def _now(self, conn: Connection) -> float:
        """Epoch seconds by the database server's clock (all hosts share it); SQLite: this host's."""
        dialect = conn.dialect.name
        if dialect == "postgresql":
            return float(conn.execute(select(func.extract("epoch", func.clock_timestamp()))).scalar())
        if dialect in ("mysql", "mariadb"):
            return float(conn.execute(select(func.unix_timestamp(func.now(6)))).scalar())
        return time.time()

    def _connect(self):  # type: ignore[no-untyped-def]
        try:
            return self.engine.connect()
        except (DatabaseError, OperationalError) as exc:
            raise CatalogError(f"the catalog cannot be read: {exc}") from None

    def _begin(self):  # type: ignore[no-untyped-def]
        try:
            return self.engine.begin()
        except (DatabaseError, OperationalError) as exc:
            raise CatalogError(f"the catalog cannot be written: {exc}") from None


def _set_row(row: Any) -> SetRow:
    m = row._mapping
    return SetRow(m["id"], m["source"], int(m["shards"]), m["state"], _utc(m["created"]), _utc(m["finished"]),
                  m["host"] or "", m["note"] or "")


def _utc(value: datetime | None) -> Any:
    if value is not None and value.tzinfo is None:  # SQLite returns naive datetimes
        return value.replace(tzinfo=timezone.utc)
    return value
