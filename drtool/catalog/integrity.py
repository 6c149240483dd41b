"""When an SQLite catalog gets a full integrity check on open, and the record of the last one.

``PRAGMA quick_check`` reads every page of the catalog: 0.08 s of CPU on the
84 MiB catalog of 20 snapshots of 200,000 files, up to 0.6 s with a large
write-ahead log -- more than the rest of ``drtool find``.  Every command used
to pay it on every open.  SQLite in WAL mode survives crashes and power loss
by itself; what the check finds is damage from outside (a disk error, a
copy taken mid-write, a stray write into the file), which is rare and not
tied to any particular open.  So the full check runs when there is a reason:

* the catalog was not closed cleanly: a ``-wal`` file with frames in it is
  left over (SQLite checkpoints and deletes it when the last writer closes;
  a read-only reader, ``catalog.peek``, leaves an empty one, which holds
  nothing; another process using the catalog right now also leaves frames
  -- a needless check, never a missed one);
* no check of this very file is on record: a new catalog, a file replaced
  or restored from a copy (another inode), a record that cannot be read;
* the last full check is older than :data:`CHECK_EVERY`;
* the command asks for it: ``drtool check`` and ``drtool catalog rebuild``.

The record is a small file beside the catalog (``catalog.sqlite.checked``,
JSON: device, inode, time), written only after a check passed -- never the
catalog itself, whose hot path stays read-only for ``find``.  Damage met by
any later query is still reported as such (``db._on_error``: the one-line
error with the rebuild hint), so skipping the check delays nothing but the
detection of pages no command reads.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

CHECK_EVERY = 24 * 3600  # seconds: a full check at least once a day (a nightly backup usually pays it)


def record_path(catalog: Path) -> Path:
    return catalog.with_name(catalog.name + ".checked")


def reason_to_check(catalog: Path, now: float | None = None) -> str | None:
    """Why the catalog needs a full check before use, or None when it does not."""
    try:
        if os.stat(f"{catalog}-wal").st_size > 0:
            return "a write-ahead log was left (not closed cleanly, or in use)"
    except OSError:
        pass  # none: the last writer closed cleanly
    try:
        info = catalog.stat()
        record = json.loads(record_path(catalog).read_text(encoding="utf-8"))
        checked = float(record["time"])
        same_file = (record["dev"], record["ino"]) == (info.st_dev, info.st_ino)
    except (OSError, ValueError, KeyError, TypeError):
        return "no full check of this file on record"
    if not same_file:
        return "the file was replaced since its last full check"
    age = (time.time() if now is None else now) - checked
    if not 0 <= age < CHECK_EVERY:  # a record from the future: the clock moved, check anyway
        return "the last full check is over a day old"
    return None


def record_check(catalog: Path) -> None:
    """Remember a passed check of this file (best effort: without a record the next open checks)."""
    record = record_path(catalog)
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    try:
        info = catalog.stat()
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"dev": info.st_dev, "ino": info.st_ino, "time": time.time()}, out)
        os.replace(tmp, record)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass


def forget_check(catalog: Path) -> None:
    """The file was moved aside or replaced: its record no longer applies."""
    try:
        record_path(catalog).unlink()
    except OSError:
        pass
