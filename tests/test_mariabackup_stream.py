"""The mbstream parsing and version rules behind MariaDB physical backups (no server needed)."""
from __future__ import annotations

import struct

import pytest

from drtool.errors import RestoreTargetError
from drtool.sources import mariabackup


def chunk(path: bytes, payload: bytes, offset: int = 0) -> bytes:
    """One mbstream payload chunk as mariabackup writes it (flags, 'P', path, length, offset, crc)."""
    return (mariabackup.MAGIC + struct.pack("<BBI", 0, ord("P"), len(path)) + path
            + struct.pack("<QQI", len(payload), offset, 0) + payload)


def eof(path: bytes) -> bytes:
    return mariabackup.MAGIC + struct.pack("<BBI", 0, ord("E"), len(path)) + path


INFO = (b"tool_version = 10.11.19-MariaDB\nserver_version = 10.11.19-MariaDB-0+deb12u1-log\n"
        b"binlog_pos = filename 'binlog.000007', position '1015', GTID of the last change '0-1-4,1-2-9'\n"
        b"innodb_to_lsn = 44894\n")


def test_info_is_found_in_a_tail_that_starts_mid_chunk() -> None:
    stream = (chunk(b"ibdata1", b"\0" * 5000) + eof(b"ibdata1") + chunk(b"xtrabackup_info", INFO[:40])
              + chunk(b"xtrabackup_info", INFO[40:], offset=40) + eof(b"xtrabackup_info"))
    tail = stream[3000:]  # what the tap keeps: the stream's end, cut anywhere
    files = mariabackup.stream_files(tail, (mariabackup.INFO_FILE,))
    assert files[mariabackup.INFO_FILE] == INFO
    meta = mariabackup.parse_backup_info(INFO.decode())
    assert meta == {"server_version": "10.11.19-MariaDB-0+deb12u1-log", "tool_version": "10.11.19-MariaDB",
                    "innodb_to_lsn": "44894", "binlog_file": "binlog.000007", "binlog_pos": 1015,
                    "gtid_pos": "0-1-4,1-2-9"}


def test_a_cut_short_stream_has_no_info() -> None:
    stream = chunk(b"ibdata1", b"x" * 100) + chunk(b"xtrabackup_info", INFO)
    assert mariabackup.stream_files(stream[:-10], (mariabackup.INFO_FILE,)) == {}


def test_replica_coordinates_by_position_and_by_gtid() -> None:
    by_pos = "CHANGE MASTER TO MASTER_LOG_FILE='mysql-bin.000012', MASTER_LOG_POS=4567\n"
    by_gtid = "SET GLOBAL gtid_slave_pos = '0-1-100';\nCHANGE MASTER TO master_use_gtid = slave_pos\n"
    assert mariabackup.parse_slave_info(by_pos) == {"primary_binlog_file": "mysql-bin.000012",
                                                    "primary_binlog_pos": 4567}
    assert mariabackup.parse_slave_info(by_gtid) == {"primary_gtid_pos": "0-1-100"}


@pytest.mark.parametrize("server, tool, ok", [
    ("10.11.19-MariaDB-0+deb12u1-log", "10.11.6-MariaDB", True),
    ("10.11.19-MariaDB-0+deb12u1-log", "11.4.2-MariaDB", False),
    ("10.6.12-MariaDB", "10.11.19-MariaDB", False),
    ("", "10.11.19-MariaDB", False),
])
def test_prepare_needs_the_backup_server_series(server: str, tool: str, ok: bool) -> None:
    if ok:
        mariabackup.check_prepare_version(server, tool)
    else:
        with pytest.raises(RestoreTargetError, match="prepare needs the same series"):
            mariabackup.check_prepare_version(server, tool)


@pytest.mark.parametrize("meta, refused", [
    ({"backup_type": "incremental", "to_lsn": 9570200, "last_lsn": 9570200}, True),   # the copy seen in CI
    ({"backup_type": "incremental", "to_lsn": 9570200, "last_lsn": 9570215}, True),
    ({"backup_type": "incremental", "to_lsn": 9570200, "last_lsn": 9570216}, False),  # the checkpoint's record
    ({"backup_type": "full", "to_lsn": 9570200, "last_lsn": 9570200}, False),         # a full's prepare does not ask
    ({"backup_type": "incremental", "to_lsn": 9570200}, False),                       # no last_lsn to compare
])
def test_an_incremental_whose_log_ends_before_its_checkpoints_record_is_refused(meta: dict[str, object],
                                                                                refused: bool) -> None:
    if refused:
        with pytest.raises(mariabackup.ShortRedoCopy, match="this copy could not be prepared; no snapshot was written"):
            mariabackup.check_redo_copied(meta)
    else:
        mariabackup.check_redo_copied(meta)
