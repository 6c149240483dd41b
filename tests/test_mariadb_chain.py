"""The rules of incremental MariaDB physical chains (no server): the nightly policy, chains, retention.

Snapshots here are plain ``Snapshot`` values with the meta a physical backup
records; the real backups and restores are in test_mariadb_incremental.py.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from drtool.databases import mariadb_chain as chain
from drtool.databases.retention import base_pins, check_chains_survive
from drtool.errors import UsageError
from drtool.snapshot.model import Snapshot
from drtool.snapshot.retention import RetentionPolicy

T0 = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)
IDENTITY = {"server_id": 1, "hostname": "db1", "datadir": "/var/lib/mysql", "system_tablespace": "2049:131"}


def physical(n: int, parent: Snapshot | None = None, *, to_lsn: int | None = None, old: bool = False,
             **identity: object) -> Snapshot:
    """Night ``n``'s physical snapshot; ``old``: the meta drtool recorded before incrementals."""
    meta: dict[str, object] = {"source": "db", "method": "physical", "binlog_file": f"binlog.{n:06d}",
                               "binlog_pos": 4, "server_version": "10.11.19-MariaDB"}
    if not old:
        meta.update(to_lsn=to_lsn if to_lsn is not None else 1000 * n, server_identity={**IDENTITY, **identity},
                    backup_type="incremental" if parent else "full")
        if parent is not None:
            meta[chain.PARENT] = parent.id
    return Snapshot("db", "h", T0 + timedelta(days=n), "tree", kind=chain.PHYSICAL_KIND, meta=meta,
                    id=f"{n:02d}" + "ab" * 31)


def nights(count: int) -> list[Snapshot]:
    """A full, then incrementals each on the previous."""
    snaps = [physical(0)]
    for n in range(1, count):
        snaps.append(physical(n, snaps[-1]))
    return snaps


def test_first_night_is_full_then_incremental_to_the_previous_from_its_to_lsn() -> None:
    assert chain.choose([], IDENTITY, 10, 7).parent is None
    snaps = nights(2)
    night = chain.choose(snaps, IDENTITY, 5000, 7)
    assert night.parent is snaps[-1] and night.lsn == 1000 and night.chain_length == 3
    assert night.meta() == {chain.PARENT: snaps[-1].id, "chain_length": 3, "chain_reason": night.reason}


@pytest.mark.parametrize("case, expected", [
    ("full flag", "--full given"),
    ("old previous", "predates incremental backups"),
    ("other server id", "server_id changed"),
    ("re-cloned datadir", "system_tablespace changed"),
    ("lsn behind", "is behind"),
    ("chain long", "(full_every = 3)"),
    ("broken chain", "is broken"),
])
def test_a_full_backup_whenever_the_lineage_is_in_doubt(case: str, expected: str) -> None:
    snaps = nights(2)
    identity, lsn, full_every, force = dict(IDENTITY), 5000, 7, False
    if case == "full flag":
        force = True
    elif case == "old previous":
        snaps = [physical(0, old=True)]
    elif case == "other server id":
        identity["server_id"] = 2
    elif case == "re-cloned datadir":
        identity["system_tablespace"] = "2049:999"
    elif case == "lsn behind":
        lsn = 999
    elif case == "chain long":
        snaps, full_every = nights(3), 3
    elif case == "broken chain":
        snaps = snaps[1:]
    night = chain.choose(snaps, identity, lsn, full_every, force)
    assert night.parent is None and night.lsn is None, night
    assert night.reason.startswith("full: ") and expected in night.reason, night.reason


def test_only_physical_snapshots_count_and_full_every_one_means_always_full() -> None:
    dump = Snapshot("db", "h", T0 + timedelta(days=9), "tree", kind="mariadb-dump", meta={}, id="ff" * 32)
    snaps = nights(2) + [dump]
    assert chain.choose(snaps, IDENTITY, 5000, 7).parent is snaps[1]
    assert chain.choose(snaps, IDENTITY, 5000, 1).parent is None


def test_chain_of_an_incremental_and_a_missing_member_named() -> None:
    snaps = nights(4)
    assert chain.chain_of(snaps[3], snaps) == snaps
    assert chain.chain_of(physical(7, old=True), snaps) == [physical(7, old=True)]  # old meta: a full base
    with pytest.raises(chain.ChainBroken) as caught:
        chain.chain_of(snaps[3], [snaps[0], snaps[2], snaps[3]])
    message = caught.value.one_line()
    assert f"needs snapshot {snaps[1].short_id} (parent of {snaps[2].short_id})" in message
    assert "\n" not in message and "--full" in message


def test_a_copied_chain_finds_its_parents_by_the_ids_they_were_copied_from() -> None:
    """``drtool copy`` gives every snapshot a new id and keeps the meta (the parent's old id)."""
    original = nights(3)
    copies = []
    for n, snap in enumerate(original):
        meta = dict(snap.meta, copied_from={"repository": "b" * 8, "snapshot": snap.id,
                                            "origin": {"repository": "a" * 8, "snapshot": snap.id}})
        copies.append(Snapshot("db", "h", snap.time, "tree", kind=snap.kind, meta=meta, id=f"{n:02d}" + "cd" * 31))
    assert chain.chain_of(copies[2], copies) == copies
    with pytest.raises(chain.ChainBroken):
        chain.chain_of(copies[2], [copies[0], copies[2]])


def test_checkpoints_parse() -> None:
    text = "backup_type = incremental\nfrom_lsn = 44864\nto_lsn = 50112\nlast_lsn = 54484\nrecover_binlog_info = 0\n"
    assert chain.parse_checkpoints(text) == {"backup_type": "incremental", "from_lsn": 44864, "to_lsn": 50112,
                                             "last_lsn": 54484}
    assert chain.parse_checkpoints("backup_type = full-backuped\nto_lsn = 7\n") == {"backup_type": "full",
                                                                                     "to_lsn": 7}


def test_retention_keeps_every_member_a_kept_incremental_needs() -> None:
    snaps = nights(4) + [physical(4)] + [physical(5)]
    snaps[5] = physical(5, snaps[4])          # a second chain: full 4, incremental 5
    pins = base_pins(snaps, RetentionPolicy(keep_last=1), T0 + timedelta(days=6), timezone.utc)
    assert set(pins) == {snaps[4].id}          # the newest is incremental 5: its full stays, chain 0-3 goes
    assert pins[snaps[4].id] == f"in the chain of kept incremental {snaps[5].id[:8]}"
    daily = base_pins(snaps[:4], RetentionPolicy(keep_last=2), T0 + timedelta(days=4), timezone.utc)
    assert set(daily) == {snaps[0].id, snaps[1].id}  # nights 2 and 3 kept: 0 and 1 are their chain


def test_forget_by_id_refuses_to_break_a_chain_but_takes_it_whole() -> None:
    snaps = nights(3)
    with pytest.raises(UsageError) as caught:
        check_chains_survive(snaps, {snaps[0].id})
    assert f"snapshot {snaps[0].short_id} is in the restore chain of incremental backup(s) " \
           f"{snaps[1].short_id}, {snaps[2].short_id}" in str(caught.value)
    check_chains_survive(snaps, {s.id for s in snaps})  # the whole chain: fine
    check_chains_survive(snaps, {snaps[2].id})           # the newest incremental alone: fine


def _weekly_chains(weeks: int, per_week: int = 7) -> list[Snapshot]:
    """``weeks`` chains of a full and ``per_week - 1`` incrementals, one night each."""
    snaps: list[Snapshot] = []
    for n in range(weeks * per_week):
        snaps.append(physical(n, snaps[-1] if n % per_week else None))
    return snaps


@pytest.mark.parametrize("policy", [
    RetentionPolicy(keep_last=1), RetentionPolicy(keep_last=3), RetentionPolicy(keep_last=9),
    RetentionPolicy(keep_daily=2), RetentionPolicy(keep_weekly=2), RetentionPolicy(keep_monthly=1),
    RetentionPolicy(keep_within=timedelta(days=3)), RetentionPolicy(keep_within=timedelta(days=10)),
    RetentionPolicy(keep_last=1, keep_weekly=3), RetentionPolicy(keep_tags=frozenset({"audit"})),
], ids=str)
def test_no_policy_leaves_a_kept_incremental_without_its_parents(policy: RetentionPolicy) -> None:
    """What forget decides (the pins, then the policy with them, as ``maintain.forget._decide``)."""
    from drtool.snapshot.retention import SnapshotRef, apply_policy
    snaps = _weekly_chains(3)
    snaps[10].tags.append("audit")  # an incremental in mid-chain, kept for its tag alone
    now = snaps[-1].time + timedelta(hours=1)
    pins = base_pins(snaps, policy, now, timezone.utc)
    refs = [SnapshotRef(s.id, s.time, frozenset(s.tags), pins.get(s.id)) for s in snaps]
    kept = {d.snapshot.id for d in apply_policy(refs, policy, now=now, tz=timezone.utc) if d.keep}
    assert kept, policy
    for snap in snaps:
        if snap.id in kept:
            assert {m.id for m in chain.chain_of(snap, snaps)} <= kept, (policy, snap.short_id)
    check_chains_survive(snaps, {s.id for s in snaps if s.id not in kept})  # what it removes is whole chains


def test_the_window_pin_skips_an_incremental_whose_chain_is_broken() -> None:
    """keep_within's first moment falls after incremental 8, whose full (7) is lost: the pin goes to
    the newest base that restores (incremental 6, with its chain 0..5), not to 8."""
    snaps = [s for s in _weekly_chains(2) if s.meta["binlog_file"] != "binlog.000007"]
    policy = RetentionPolicy(keep_within=timedelta(days=4, hours=12))
    now = snaps[-1].time
    pins = base_pins(snaps, policy, now, timezone.utc)
    eight = next(s for s in snaps if s.meta["binlog_file"] == "binlog.000008")
    six = next(s for s in snaps if s.meta["binlog_file"] == "binlog.000006")
    assert eight.id not in pins
    assert pins[six.id].startswith("pitr base for window starting")
    assert all(s.id in pins for s in snaps if int(s.meta["binlog_file"][-6:]) < 6)


def test_window_counts_only_bases_with_a_whole_chain() -> None:
    from drtool.databases.mariadb import MARIADB
    from drtool.snapshot.logwindow import compute_window
    snaps = _weekly_chains(2, per_week=3)           # 0 full, 1, 2; 3 full, 4, 5
    whole = compute_window("db", MARIADB, snaps, [])
    assert whole.bases == 6 and whole.broken == []
    lost = [s for s in snaps if s is not snaps[3]]
    window = compute_window("db", MARIADB, lost, [])
    assert window.bases == 3 and [b.base.snapshot for b in window.broken] == [snaps[4], snaps[5]]
    assert window.end == snaps[2].time              # no binlogs: each whole base is its own instant
    assert f"needs snapshot {snaps[3].short_id} (parent of {snaps[4].short_id})" in str(window.broken[1].error)


def nights_with_a_short_third() -> list[Snapshot]:
    """Four nights whose copied logs reach past their checkpoints, but night 2's (the third), which
    an older drtool stored with its copied redo log ending at its to_lsn."""
    snaps = nights(4)
    for snap in snaps:
        snap.meta["last_lsn"] = snap.meta["to_lsn"] + 500
    snaps[2].meta["last_lsn"] = snaps[2].meta["to_lsn"]
    return snaps


def test_a_chain_through_an_incremental_copied_short_cannot_be_prepared_and_the_next_night_is_full() -> None:
    """Night 2 ended its copied log at its checkpoint (stored before backups refused that): it and
    night 3 on top of it are unusable bases, night 1 is not; tonight starts a new chain."""
    snaps = nights_with_a_short_third()
    assert chain.chain_of(snaps[1], snaps) == snaps[:2]
    for broken in snaps[2:]:
        with pytest.raises(chain.ChainUnpreparable) as caught:
            chain.chain_of(broken, snaps)
        assert caught.value.member is snaps[2]
    assert str(caught.value) == (f"snapshot {snaps[3].short_id} of source db cannot be prepared: its chain holds "
                                 f"incremental {snaps[2].short_id}, whose copied redo log ends before its checkpoint "
                                 f"(last_lsn 2000 < to_lsn 2000 + 16), which mariabackup --prepare refuses")
    night = chain.choose(snaps, IDENTITY, 9000, 7)
    assert night.parent is None and "is broken" in night.reason and "cannot be prepared" in night.reason
    # a full whose log ends at its checkpoint prepares (its prepare makes no such comparison)
    alone = nights(1)
    alone[0].meta["last_lsn"] = alone[0].meta["to_lsn"]
    assert chain.chain_of(alone[0], alone) == alone


def test_check_names_the_short_incremental_and_what_it_takes_down_in_one_line() -> None:
    from drtool.maintain.checkreport import broken_chains, summarise
    snaps = nights_with_a_short_third()
    found = broken_chains(snaps, set(), {})
    assert [f["snapshot"] for f in found] == [snaps[2].id, snaps[3].id]
    (line,) = summarise({}, snaps, {}, found)
    assert line.startswith(f"incremental physical snapshots {snaps[2].short_id} (")
    assert (f"cannot be restored: their chain holds incremental {snaps[2].short_id}, whose copied redo log ends "
            f"before its checkpoint (mariabackup --prepare refuses it); take a full backup (drtool backup --source "
            f"db --full) and forget the orphans (drtool forget {snaps[2].short_id} {snaps[3].short_id})") in line
