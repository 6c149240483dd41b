"""A restore never reports success short of its target: the pure checks behind that promise.

The end-to-end cases (a WAL file that reads as absent during a real
PostgreSQL recovery, exact restores under load) are in test_postgres_pitr.py
and test_pitr_production.py; these pin the decision rules and the parsing of
what PostgreSQL and mariadb-binlog print, including chunk boundaries.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from drtool.databases.mariadb import MARIADB
from drtool.databases.mariadb import verify_replay as verify_binlog_replay
from drtool.databases.planner import PitrPlan, RecoveryShort
from drtool.databases.postgresql import POSTGRESQL
from drtool.databases.postgresql import verify_recovery as verify_postgres_recovery
from drtool.snapshot.logwindow import BINLOG, WAL, RecoveryBase, Segment
from drtool.snapshot.model import Snapshot
from drtool.sources import mariadb, postgres

T0 = datetime(2026, 11, 20, 14, 0, 0, tzinfo=timezone.utc)
MB = 16 * 1024 * 1024


def _plan(kind: str, segments: list[Segment], target: datetime | None, immediate: bool = False) -> PitrPlan:
    snap = Snapshot("src", "host", T0, "tree", kind="pg-base" if kind == WAL else "mariadb-dump", id="ab" * 32)
    base = RecoveryBase(snap, 1, 1, T0, 1)
    return PitrPlan("src", POSTGRESQL if kind == WAL else MARIADB, base, segments, target, True,
                    T0 + timedelta(minutes=5), immediate=immediate)


def _wal(seq: int, last: datetime | None) -> Segment:
    return Segment("src", WAL, postgres.segment_name(1, seq), "id", MB, T0, timeline=1, seq=seq,
                   last_time=last, start_pos=postgres.format_lsn(seq * MB), end_pos=postgres.format_lsn((seq + 1) * MB))


def _outcome(last: datetime | None, redo_lsn: int | None, stopped: str | None = None) -> dict[str, str]:
    out: dict[str, str] = {}
    if last is not None:
        out["last_transaction"] = f"last completed transaction was at log time {last:%Y-%m-%d %H:%M:%S.%f}+00"
    if redo_lsn is not None:
        out["redo_done"] = f"redo done at {postgres.format_lsn(redo_lsn)} system usage: CPU: user: 0.01 s"
    if stopped:
        out["stopped"] = stopped
    return out


def test_postgres_latest_must_reach_the_last_archived_commit_and_segment() -> None:
    last = T0 + timedelta(minutes=4, microseconds=123456)
    plan = _plan(WAL, [_wal(1, T0 + timedelta(minutes=1)), _wal(2, last)], None)
    assert "all archived WAL replayed" in verify_postgres_recovery(plan, _outcome(last, 2 * MB + 4096))
    with pytest.raises(RecoveryShort, match="short of --latest"):  # ended one segment early
        verify_postgres_recovery(plan, _outcome(T0 + timedelta(minutes=1), MB + 4096))
    with pytest.raises(RecoveryShort, match="short of the last archived segment"):
        verify_postgres_recovery(plan, _outcome(last, MB + 8192))
    with pytest.raises(RecoveryShort):  # the log said nothing: never assume success
        verify_postgres_recovery(plan, {})


def test_postgres_time_target_needs_recovery_stopping_and_immediate_needs_consistency() -> None:
    plan = _plan(WAL, [_wal(1, T0 + timedelta(minutes=3))], T0 + timedelta(minutes=2))
    stopped = "recovery stopping before commit of transaction 812, time 2026-11-20 14:03:00.000001+00"
    assert verify_postgres_recovery(plan, _outcome(T0, MB, stopped)) == stopped
    with pytest.raises(RecoveryShort, match="without reaching"):
        verify_postgres_recovery(plan, _outcome(T0, MB))
    named = _plan(WAL, [_wal(1, None)], None, immediate=True)
    assert "consistent end" in verify_postgres_recovery(
        named, _outcome(None, MB, "recovery stopping after reaching consistency"))
    with pytest.raises(RecoveryShort):
        verify_postgres_recovery(named, _outcome(T0, MB))


def test_postgres_log_times_in_any_zone_are_read_as_instants() -> None:
    outcome = {"last_transaction": "last completed transaction was at log time 2026-11-20 09:00:01.5-05"}
    assert postgres.last_transaction_time(outcome) == datetime(2026, 11, 20, 14, 0, 1, 500000, tzinfo=timezone.utc)
    assert postgres.redo_end_lsn({"redo_done": "redo done at 1/A0000028 system usage"}) == 0x1A0000028


HEADER = "#{day} {time} server id 1  end_log_pos {pos} CRC32 0x0 \t{what}\n"


def _binlog_stream(files: list[list[tuple[str, int, str]]]) -> bytes:
    out = []
    for events in files:
        out.append(HEADER.format(day="261120", time="14:00:00", pos=256, what="Start: binlog v 4, server v 10.11"))
        for stamp, pos, what in events:
            out.append(HEADER.format(day="261120", time=stamp, pos=pos, what=what))
            out.append("BINLOG '" + "QUJD" * 3000 + "'/*!*/;\n")  # long base64 lines between headers
    return "".join(out).encode()


def _binlog(name: str, first: str, last: str, end: int) -> Segment:
    def at(text: str) -> datetime:
        h, m, s = (int(x) for x in text.split(":"))
        return T0.replace(hour=h, minute=m, second=s)
    return Segment("src", BINLOG, name, "id", 1, T0, seq=int(name[-1]), first_time=at(first), last_time=at(last),
                   start_pos="4", end_pos=str(end))


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_binlog_replay_progress_survives_any_chunking(chunk: int) -> None:
    stream = _binlog_stream([[("14:00:01", 400, "GTID 0-1-1 trans"), ("14:00:02", 900, "Rotate to b.2")],
                             [("14:00:03", 500, "GTID 0-1-2 trans"), ("14:00:04", 700, "Xid = 9")]])
    progress = mariadb.ReplayProgress()
    for i in range(0, len(stream), chunk):
        progress.feed(stream[i:i + chunk])
    assert progress.file_end_pos == [900, 700]
    assert progress.last_time == T0.replace(second=4)


def test_binlog_replay_short_of_plan_is_refused() -> None:
    segments = [_binlog("b.1", "14:00:00", "14:00:02", 900), _binlog("b.2", "14:00:03", "14:00:04", 700)]
    full = mariadb.ReplayProgress()
    full.feed(_binlog_stream([[("14:00:02", 900, "Rotate")], [("14:00:04", 700, "Xid = 9")]]))
    assert "all archived binlog events replayed" in verify_binlog_replay(_plan(BINLOG, segments, None), full, None)
    first_only = mariadb.ReplayProgress()
    first_only.feed(_binlog_stream([[("14:00:02", 900, "Rotate")]]))
    with pytest.raises(RecoveryShort, match="never reached b.2"):
        verify_binlog_replay(_plan(BINLOG, segments, None), first_only, None)
    cut = mariadb.ReplayProgress()
    cut.feed(_binlog_stream([[("14:00:01", 400, "GTID 0-1-1 trans")], [("14:00:04", 700, "Xid = 9")]]))
    with pytest.raises(RecoveryShort, match="stopped in b.1 at position 400"):
        verify_binlog_replay(_plan(BINLOG, segments, None), cut, None)
    # a time target inside b.2: b.1 must be complete, b.2 only started
    stop = T0.replace(second=4)
    partial = mariadb.ReplayProgress()
    partial.feed(_binlog_stream([[("14:00:02", 900, "Rotate")], [("14:00:03", 500, "GTID 0-1-2 trans")]]))
    assert "before" in verify_binlog_replay(_plan(BINLOG, segments, stop), partial, stop)
