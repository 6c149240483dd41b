"""MariaDB physical backups with mariabackup: commands, the mbstream format, version checks.

``mariabackup --backup --stream=mbstream`` writes the copied data files as
one stream on stdout; drtool stores it as it comes (no temporary copy).  The
stream ends with ``xtrabackup_info``, which names the server version and the
binlog coordinates (file, position, GTID) the copy is consistent with: read
from the stream's tail, they make the backup the base of a point-in-time
restore.  A restore extracts the stream (in process, as ``mbstream -x`` would), prepares it
(``mariabackup --prepare``, which must be of the backup's server series),
and starts ``mariadbd`` on it.
"""
from __future__ import annotations

import re
import struct
import subprocess
from typing import Any

from drtool.childenv import child_environment
from drtool.errors import RestoreTargetError, SourceError
from drtool.sources.mariadb import MariaSource, conn_args, find_binary

MAGIC = b"XBSTCK01"
INFO_FILE = b"xtrabackup_info"
SLAVE_INFO_FILE = b"xtrabackup_slave_info"
_CHUNK_HEAD = struct.Struct("<BBI")        # flags, type, path length
_PAYLOAD_HEAD = struct.Struct("<QQI")      # payload length, offset, checksum
_BINLOG_POS_RE = re.compile(r"filename '([^']+)', position '(\d+)'(?:, GTID of the last change '([^']*)')?")
_VERSION_RE = re.compile(r"(\d+)\.(\d+)\.(\d+)")
FILE_CHECKPOINT_SIZE = 16  # the redo record a checkpoint writes at its LSN: an incremental's prepare reads it


def backup_command(src: MariaSource, opts: list[str], datadir: str, workdir: str,
                   replica: bool = False, incremental_lsn: int | None = None) -> list[str]:
    """mariabackup streaming the whole server; ``workdir`` stays empty (it is only a required name).

    ``--slave-info`` on a replica records the primary's coordinates and GTID;
    ``--incremental-lsn`` copies only the pages changed since that LSN (the
    previous night's ``to_lsn``), with no base directory on this host.
    """
    cmd = [find_binary("mariabackup", src.bindir), *opts, "--backup", "--stream=mbstream",
           f"--target-dir={workdir}", f"--datadir={datadir}", *conn_args(src)]
    if replica:
        cmd.append("--slave-info")
    if incremental_lsn is not None:
        cmd.append(f"--incremental-lsn={incremental_lsn}")
    return cmd + src.options


def stream_files(data: bytes, wanted: tuple[bytes, ...]) -> dict[bytes, bytes]:
    """The payload of the small files named ``wanted`` found whole in a piece of an mbstream.

    ``data`` may start mid-chunk (a stream's tail): scanning starts at each
    magic marker; a chunk that does not parse is skipped.
    """
    found: dict[bytes, bytes] = {}
    pos = data.find(MAGIC)
    while pos >= 0:
        head = pos + len(MAGIC)
        try:
            _flags, kind, path_len = _CHUNK_HEAD.unpack_from(data, head)
            path = data[head + _CHUNK_HEAD.size:head + _CHUNK_HEAD.size + path_len]
            body = head + _CHUNK_HEAD.size + path_len
            if kind == ord("P") and path in wanted:
                length, offset, _checksum = _PAYLOAD_HEAD.unpack_from(data, body)
                payload = data[body + _PAYLOAD_HEAD.size:body + _PAYLOAD_HEAD.size + length]
                if len(payload) == length:
                    found[path] = found.get(path, b"")[:offset] + payload
        except struct.error:
            pass
        pos = data.find(MAGIC, pos + 1)
    return found


def parse_backup_info(text: str) -> dict[str, Any]:
    """Server version and binlog coordinates from ``xtrabackup_info``."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            values[key.strip()] = value.strip()
    meta: dict[str, Any] = {"server_version": values.get("server_version", ""),
                            "tool_version": values.get("tool_version", ""),
                            "innodb_to_lsn": values.get("innodb_to_lsn")}
    match = _BINLOG_POS_RE.search(values.get("binlog_pos", ""))
    if match:
        meta["binlog_file"], meta["binlog_pos"] = match.group(1), int(match.group(2))
        if match.group(3):
            meta["gtid_pos"] = match.group(3)
    return meta


class ShortRedoCopy(SourceError):
    """mariabackup exited 0, but the redo log an incremental copied ends before its own checkpoint's record.

    An incremental's ``--prepare`` recovers to ``to_lsn`` (the server's checkpoint, read at the
    end of the backup) and refuses a copied log that does not hold the checkpoint's 16-byte
    FILE_CHECKPOINT record after it: ``last_lsn`` (where the copied log ends) must be at least
    ``to_lsn`` + 16, or prepare fails with "The log was only applied up to LSN L-16, instead of
    T".  ``test_mariadb_redo_copy`` checks that rule against the real mariabackup; a full's
    prepare makes no such comparison.  mariabackup 10.11 does not check it at backup time, and
    an incremental whose copy ended exactly at ``to_lsn`` was seen in this project's CI: most
    likely a checkpoint the quiet server wrote during the backup's last step.  A run taken again
    a moment later copies the record."""

    hint = ("the backup was taken again and each copy stopped short: run it again later; if it keeps "
            "happening, take a full backup (--full) or update mariadb-backup")


def redo_stops_short(meta: dict[str, Any]) -> bool:
    """An incremental whose copied redo log ends before its checkpoint's record: ``--prepare``
    refuses it (see :class:`ShortRedoCopy`).  Fulls, and snapshots without both LSNs, do not."""
    to_lsn, last_lsn = meta.get("to_lsn"), meta.get("last_lsn")
    return (meta.get("backup_type") == "incremental" and isinstance(to_lsn, int) and isinstance(last_lsn, int)
            and last_lsn - to_lsn < FILE_CHECKPOINT_SIZE)


def check_redo_copied(meta: dict[str, Any]) -> None:
    """Refuse an incremental that ``--prepare`` would refuse (see :class:`ShortRedoCopy`), before
    it is stored."""
    if redo_stops_short(meta):
        raise ShortRedoCopy(f"mariabackup's incremental copy of the redo log ends at LSN {meta['last_lsn']}, but "
                            f"its checkpoint {meta['to_lsn']} needs it to reach "
                            f"{meta['to_lsn'] + FILE_CHECKPOINT_SIZE}: this copy could not be prepared; "
                            f"no snapshot was written")


def parse_slave_info(text: str) -> dict[str, Any]:
    """The primary's coordinates and GTID recorded by ``--slave-info`` on a replica."""
    meta: dict[str, Any] = {}
    gtid = re.search(r"gtid_slave_pos\s*=\s*'([^']*)'", text)
    if gtid:
        meta["primary_gtid_pos"] = gtid.group(1)
    coords = re.search(r"MASTER_LOG_FILE='([^']+)', MASTER_LOG_POS=(\d+)", text)
    if coords:
        meta["primary_binlog_file"], meta["primary_binlog_pos"] = coords.group(1), int(coords.group(2))
    return meta


def series(version: str) -> tuple[int, int] | None:
    """(major, minor) of a MariaDB version string: the unit prepare compatibility is judged by."""
    match = _VERSION_RE.search(version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def tool_version(bindir: str | None) -> str:
    """``mariabackup --version`` (it prints on stderr)."""
    proc = subprocess.run([find_binary("mariabackup", bindir), "--version"], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=child_environment(), timeout=60, check=False)
    match = re.search(r"MariaDB server (\S+)", proc.stderr + proc.stdout)
    if proc.returncode != 0 or not match:
        raise SourceError(f"cannot tell the version of mariabackup: {(proc.stderr or proc.stdout).strip()[:200]}")
    return match.group(1)


def check_prepare_version(backup_server: str, tool: str) -> None:
    """``--prepare`` must run with a mariabackup of the backup's server series (e.g. 10.11)."""
    want, have = series(backup_server), series(tool)
    if want is None or have is None or want != have:
        raise RestoreTargetError(
            f"this backup was taken from MariaDB {backup_server or '(unknown version)'}, but mariabackup here "
            f"is {tool}: prepare needs the same series ({'.'.join(map(str, want)) if want else '?'})",
            hint="install that MariaDB series' mariabackup (package mariadb-backup) or set 'bindir' to it")


def prepare_command(target: str, bindir: str | None, incremental_dir: str | None = None) -> list[str]:
    """Prepare a full backup; with ``incremental_dir``, apply that incremental onto the prepared full."""
    cmd = [find_binary("mariabackup", bindir), "--no-defaults", "--prepare", f"--target-dir={target}"]
    return cmd + ([f"--incremental-dir={incremental_dir}"] if incremental_dir else [])
