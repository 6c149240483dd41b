"""Binlog chains by GTID (``drtool.databases.mariadb_gtid``): pure rules on catalog rows, no server.

The switchover against real servers is in test_mariadb_switchover.py; here
the cases a real topology makes slow to stage: a diverged old primary, a
missing file in the middle of one server's run, records written before
``gtid_start`` / ``gtid_end`` existed.
"""
from __future__ import annotations

from datetime import datetime, timezone

from drtool.databases import mariadb_gtid as gtid
from drtool.snapshot.logwindow import Segment

T = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _seg(name: str, start: str, end: str, **extra: object) -> Segment:
    return Segment(source="s", kind="binlog", name=name, object_id=name, size=1, archived_at=T,
                   seq=int(name.rsplit(".", 1)[1]), extra={"gtid_start": start, "gtid_end": end, "last_gtid": end,
                                                           **extra})


BASE = {"binlog_file": "binlog.000001", "binlog_pos": 400, "gtid_pos": "0-1-10", "server_id": 1}


def test_one_server_follows_file_numbers() -> None:
    segs = [_seg("s1-binlog.000001", "0-1-5", "0-1-20"), _seg("s1-binlog.000002", "0-1-20", "0-1-30")]
    assert [s.name for s in gtid.chain_from(BASE, segs)] == ["s1-binlog.000001", "s1-binlog.000002"]
    assert gtid.replay_runs(BASE, segs) == [(segs, 400)]


def test_switchover_jumps_by_gtid_and_starts_after_the_replayed_position() -> None:
    old = [_seg("s1-binlog.000001", "0-1-5", "0-1-20")]
    new = [_seg("s2-binlog.000001", "", "0-1-25", first_gtid="0-1-1"),  # replicated copies, then t1b
           _seg("s2-binlog.000002", "0-1-25", "0-2-40"), _seg("s2-binlog.000003", "0-2-40", "0-2-50")]
    chain = gtid.chain_from(BASE, old + new)
    assert [s.name for s in chain] == ["s1-binlog.000001", "s2-binlog.000001", "s2-binlog.000002",
                                       "s2-binlog.000003"]
    runs = gtid.replay_runs(BASE, chain)
    assert [(len(files), start) for files, start in runs] == [(1, 400), (3, "0-1-20")]


def test_a_diverged_old_primary_is_not_followed() -> None:
    """The new primary's seq 21 is not the old primary's seq 21: another history, never mixed in."""
    segs = [_seg("s1-binlog.000001", "0-1-5", "0-1-20"), _seg("s3-binlog.000004", "0-2-20", "0-2-30")]
    assert [s.name for s in gtid.chain_from(BASE, segs)] == ["s1-binlog.000001"]
    gap = gtid.gap_after(BASE, gtid.chain_from(BASE, segs), segs)
    assert gap is not None and gap.missing and "after GTID 0-1-20" in gap.missing


def test_a_missing_file_of_one_server_is_named_by_number() -> None:
    segs = [_seg("s1-binlog.000001", "0-1-5", "0-1-20"), _seg("s1-binlog.000003", "0-1-30", "0-1-40")]
    chain = gtid.chain_from(BASE, segs)
    gap = gtid.gap_after(BASE, chain, segs)
    assert [s.name for s in chain] == ["s1-binlog.000001"]
    assert gap is not None and (gap.first, gap.before, gap.after, gap.missing) == (
        2, "s1-binlog.000001", "s1-binlog.000003", None)


def test_base_from_a_replica_starts_in_the_primary_archive_by_gtid() -> None:
    """A dump of a replica names the replica's file; the archive holds the primary's."""
    meta = {"binlog_file": "binlog.000007", "binlog_pos": 900, "gtid_pos": "0-1-12", "server_id": 2}
    segs = [_seg("s1-binlog.000001", "0-1-5", "0-1-20"), _seg("s1-binlog.000002", "0-1-20", "0-1-30")]
    chain = gtid.chain_from(meta, segs)
    assert [s.name for s in chain] == ["s1-binlog.000001", "s1-binlog.000002"]
    assert gtid.replay_runs(meta, chain)[0][1] == "0-1-12"


def test_records_from_before_gtid_ranges_and_bare_names_still_chain() -> None:
    """Archives written by earlier builds: bare file names, Gtid_list + first/last GTID only."""
    meta = {"binlog_file": "binlog.000001", "binlog_pos": 400, "gtid_pos": "0-1-10"}
    old = Segment(source="s", kind="binlog", name="binlog.000001", object_id="a", size=1, archived_at=T, seq=1,
                  extra={"gtid_list": "0-1-5", "first_gtid": "0-1-6", "last_gtid": "0-1-20"})
    cov = gtid.coverage(old)
    assert cov is not None and cov.start == {0: (1, 5)} and cov.end == {0: (1, 20)}
    assert gtid.chain_from(meta, [old]) == [old]
    assert gtid.parse_position("0-2-1,0-1-6,1-3-4") == {0: (1, 6), 1: (3, 4)}


def test_forget_keeps_what_an_older_base_needs_across_a_switchover() -> None:
    """The oldest kept base by number is the new primary's; the old primary's base still crosses into the
    new primary's file 2 by GTID, so that file stays although it is numbered before the newer base."""
    from datetime import timedelta

    from drtool.databases.mariadb import MARIADB
    from drtool.databases.retention import plan_expiry
    from drtool.snapshot.model import Snapshot

    def snap(ident: str, hours: int, **meta: object) -> Snapshot:
        return Snapshot(name="s", host="h", time=T + timedelta(hours=hours), tree="0" * 64, kind="mariadb-dump",
                        meta=dict(meta), id=ident * 64)

    older = snap("a", 0, binlog_file="binlog.000050", binlog_pos=400, gtid_pos="0-1-10", server_id=1)
    newer = snap("b", 5, binlog_file="binlog.000003", binlog_pos=400, gtid_pos="0-2-45", server_id=2)
    segs = [_seg("s1-binlog.000050", "0-1-5", "0-1-20"), _seg("s1-binlog.000051", "0-1-20", "0-1-30"),
            _seg("s2-binlog.000001", "", "0-1-25", first_gtid="0-1-1"),
            _seg("s2-binlog.000002", "0-1-25", "0-2-40"), _seg("s2-binlog.000003", "0-2-40", "0-2-50"),
            _seg("s2-binlog.000004", "0-2-50", "0-2-60")]
    bases = [b for b in (MARIADB.base_of(older, 0), MARIADB.base_of(newer, 0)) if b is not None]
    plan = plan_expiry("s", MARIADB, segs, bases)
    assert [s.name for s in plan.expire] == ["s2-binlog.000001"]
    assert plan.keep_from == "s2-binlog.000003"


def test_window_over_many_binlogs_and_bases_stays_linear() -> None:
    """A year of nightly bases over thousands of binlogs: each base's chain is planned against one index
    of the archive (a first version rebuilt sets per step: minutes here; now well under a second)."""
    import time as clock
    from datetime import timedelta

    from drtool.databases.mariadb import MARIADB
    from drtool.snapshot.logwindow import compute_window
    from drtool.snapshot.model import Snapshot
    count, bases = 3000, 60
    segs = [_seg(f"s1-binlog.{i:06d}", f"0-1-{i * 100}", f"0-1-{(i + 1) * 100}") for i in range(1, count + 1)]
    for i, seg in enumerate(segs):
        seg.first_time, seg.last_time = T + timedelta(minutes=i), T + timedelta(minutes=i + 1)
    snaps = [Snapshot(name="s", host="h", time=T + timedelta(minutes=k * 50), tree="0" * 64, kind="mariadb-dump",
                      meta={"binlog_file": f"binlog.{k * 50 + 1:06d}", "binlog_pos": 4, "server_id": 1,
                            "gtid_pos": f"0-1-{k * 5000 + 105}"}, id=f"{k:064d}") for k in range(bases)]
    started = clock.monotonic()
    window = compute_window("s", MARIADB, snaps, segs)
    assert clock.monotonic() - started < 10
    assert window.gaps == [] and len(window.intervals) == 1 and window.end == segs[-1].last_time
