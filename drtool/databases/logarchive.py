"""Archiving database log files: PostgreSQL WAL (wal-push / wal-fetch) and MariaDB binlogs.

Each log file is its own sealed object, not a blob in a pack: PostgreSQL
calls ``archive_command`` once per 16 MiB segment and waits for it, so the
push must be one PUT with no index load and no lock round trips.  Objects
live under ``wal/<source key>/<name id>`` (``binlog/…`` for binlogs) where
both parts are keyed MACs: the bucket shows neither source names nor file
names.  Because the object name is a function of (source, file name), a
retried push finds its earlier upload and compares contents — identical is
success (PostgreSQL retries after crashes), different is a loud error
(two clusters writing into one source, or a corrupted file).

Each data object has a small ``<id>.info`` companion (times, positions,
GTIDs) written *after* it, so the catalog can be rebuilt from the repository
without downloading segments; an ``.info`` always implies its data object.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import struct
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from drtool.backends.registry import open_backend
from drtool.databases import mariadb_gtid as gtid
from drtool.snapshot.logwindow import BINLOG, WAL, Segment
from drtool.errors import DrtoolError, IntegrityError, ObjectMissing, UsageError
from drtool.repository.objects import (INFO_SUFFIX, LOG_INFO_KIND, LOG_KINDS, log_kind, log_prefix,
                                       object_name)
from drtool.repository.repo import Repository
from drtool.sources import mariadb, postgres
from drtool.testing_hooks import crash_point

if TYPE_CHECKING:  # the catalog (SQLAlchemy, ~0.3 s to import) is not needed to push or fetch a file
    from drtool.catalog.logs import LogCatalog
    from drtool.core.session import OpenOptions, Session

log = logging.getLogger("drtool")
HEADER_LEN = struct.Struct(">I")


class SegmentConflict(DrtoolError):
    """The archive already holds this file name for this source with other content."""

    hint = "two servers may be archiving into one source name; give each its own --source"


class SegmentNotArchived(DrtoolError):
    """wal-fetch: the repository was read and the file is not in it (PostgreSQL then ends recovery)."""

    definitely_absent = True


class FetchFailed(DrtoolError):
    """wal-fetch could not tell whether the file exists: PostgreSQL must abort, not promote.

    PostgreSQL treats a restore_command exit status above 125 as fatal; any
    lower status means "no such file", which would end recovery early.
    """

    exit_code = 126


@dataclass
class PushResult:
    name: str
    status: str  # "stored" or "already-archived"
    size: int
    object_id: str

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def open_repository_only(options: OpenOptions) -> Repository:
    """The repository without catalog or index: all wal-push / wal-fetch need."""
    return Repository.open(open_backend(options.repository, options.backend_options), options.passphrase)


# ----- naming and encoding ------------------------------------------------------------------
def source_prefix(repo: Repository, kind: str, source: str) -> str:
    return log_prefix(kind, repo.ids.object_id(f"{kind}-source", source.encode()).hex()[:32])


def segment_object_id(repo: Repository, kind: str, source: str, name: str) -> str:
    return repo.ids.object_id(f"{kind}-name", f"{source}/{name}".encode()).hex()


def encode_segment(header: dict[str, Any], payload: bytes) -> bytes:
    raw = json.dumps(header, sort_keys=True).encode()
    return HEADER_LEN.pack(len(raw)) + raw + payload


def decode_segment(plaintext: bytes) -> tuple[dict[str, Any], bytes]:
    try:
        (length,) = HEADER_LEN.unpack_from(plaintext)
        header = json.loads(plaintext[HEADER_LEN.size:HEADER_LEN.size + length])
    except (struct.error, ValueError) as exc:
        raise IntegrityError(f"archived log object has a malformed header: {exc}") from None
    return header, plaintext[HEADER_LEN.size + length:]


def store_segment(repo: Repository, seg: Segment, payload: bytes) -> str:
    """Store data then info, idempotently; return "stored" or "already-archived"."""
    prefix = source_prefix(repo, seg.kind, seg.source)
    data_name = object_name(prefix, seg.object_id)
    status = "stored"
    if repo.backend.stat(data_name) is not None:
        header, stored = decode_segment(repo.get_object(prefix, log_kind(seg.kind), seg.object_id))
        if stored != payload or header.get("name") != seg.name:
            raise SegmentConflict(f"{seg.kind} file {seg.name} of source {seg.source} is already archived "
                                  f"with different content ({len(stored)} bytes stored, {len(payload)} "
                                  f"bytes now); refusing to overwrite it")
        status = "already-archived"
    else:
        header = {"source": seg.source, "kind": seg.kind, "name": seg.name, "size": len(payload),
                  "time": seg.archived_at.isoformat()}
        repo.put_object(prefix, log_kind(seg.kind), encode_segment(header, payload), seg.object_id)
        crash_point(f"{'wal-push' if seg.kind == WAL else 'binlog-push'}-after-put")
    if repo.backend.stat(data_name + INFO_SUFFIX) is None:
        info = json.dumps(seg.as_dict(), sort_keys=True).encode()
        repo.put_object(prefix, LOG_INFO_KIND, info, seg.object_id + INFO_SUFFIX)
    return status


def fetch_segment(repo: Repository, kind: str, source: str, name: str) -> bytes:
    prefix = source_prefix(repo, kind, source)
    object_id = segment_object_id(repo, kind, source, name)
    try:
        plaintext = repo.get_object(prefix, log_kind(kind), object_id)
    except ObjectMissing:
        raise SegmentNotArchived(f"{kind} file {name} of source {source} is not in the archive") from None
    header, payload = decode_segment(plaintext)
    if header.get("name") != name or header.get("source") != source or header.get("size") != len(payload):
        raise IntegrityError(f"archived {kind} file {name} of source {source} does not match its header")
    return payload


# ----- PostgreSQL WAL -------------------------------------------------------------------------------
def wal_segment_record(repo: Repository, source: str, path: str, payload: bytes,
                       bindir: str | None) -> Segment:
    """What the catalog needs to know about one WAL file (times from pg_waldump, best effort)."""
    name = os.path.basename(path)
    file_kind = postgres.wal_file_kind(name)
    if file_kind is None:
        raise UsageError(f"{name} is not a PostgreSQL WAL file name",
                         hint="use archive_command = 'drtool pg wal-push --source NAME %p'")
    seg = Segment(source=source, kind=WAL, name=name, object_id=segment_object_id(repo, WAL, source, name),
                  size=len(payload), archived_at=datetime.now(timezone.utc), extra={"file": file_kind})
    if file_kind in ("segment", "partial"):
        parsed = postgres.parse_segment(name[:24], len(payload))
        if parsed and file_kind == "segment":
            seg.timeline, seg.seq = parsed
            seg.start_pos = postgres.format_lsn(parsed[1] * len(payload))
            seg.end_pos = postgres.format_lsn((parsed[1] + 1) * len(payload))
            seg.extra["segment_size"] = len(payload)
        found = postgres.wal_transactions(path, bindir)
        if found.times:
            seg.first_time, seg.last_time = min(found.times), max(found.times)
            seg.extra["transactions"] = len(found.times)
        if found.committed:  # where a recovery_target_xid stops (planning picks the base before)
            seg.extra["xid_min"], seg.extra["xid_max"] = min(found.committed), max(found.committed)
    elif file_kind == "history":
        seg.timeline = int(name[:8], 16)
    elif file_kind == "backup":
        seg.extra.update(_backup_history(payload))
    return seg


def _backup_history(payload: bytes) -> dict[str, Any]:
    text = payload.decode("utf-8", "replace")
    out: dict[str, Any] = {}
    for line in text.splitlines():
        key, _, value = line.partition(": ")
        if key in ("START WAL LOCATION", "STOP WAL LOCATION", "STOP TIME", "START TIME"):
            out[key.lower().replace(" ", "_")] = value.strip()
    return out


def wal_push(repo: Repository, source: str, path: str, bindir: str | None = None) -> PushResult:
    """archive_command: store one WAL file; exit 0 only when it is safely stored."""
    try:
        with open(path, "rb") as handle:
            payload = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read WAL file {path}: {exc.strerror}") from None
    seg = wal_segment_record(repo, source, path, payload, bindir)
    status = store_segment(repo, seg, payload)
    return PushResult(seg.name, status, len(payload), seg.object_id)


RESTORE_POINT_PREFIX = "restore-point:"


def record_restore_point(repo: Repository, source: str, name: str, point: dict[str, Any]) -> PushResult:
    """Store a restore point (name, LSN, time, timeline) beside the source's WAL.

    It lives in the WAL archive as a small file of its own (``restore-point:NAME``)
    so the planner finds it in the catalog's log rows and picks the base
    before it, ``copy`` carries it along, and its name is as hidden as a WAL
    file name.  A name is recorded once: PostgreSQL would stop at the first
    of two points with one name, so a second one is refused.
    """
    file_name = RESTORE_POINT_PREFIX + name
    object_id = segment_object_id(repo, WAL, source, file_name)
    prefix = source_prefix(repo, WAL, source)
    if repo.backend.stat(object_name(prefix, object_id) + INFO_SUFFIX) is not None:
        raise UsageError(f"restore point {name!r} of source {source} is already recorded",
                         hint="restore point names must be unique per source: choose another name")
    payload = json.dumps(dict(point, name=name), sort_keys=True).encode()
    seg = Segment(source=source, kind=WAL, name=file_name, object_id=object_id, size=len(payload),
                  archived_at=datetime.now(timezone.utc), timeline=int(point["timeline"]),
                  first_time=datetime.fromisoformat(point["time"]),
                  last_time=datetime.fromisoformat(point["time"]), start_pos=point["lsn"], end_pos=point["lsn"],
                  extra={"file": "restore-point", "restore_point": name, "wal_file": point["wal_file"]})
    return PushResult(file_name, store_segment(repo, seg, payload), len(payload), object_id)


def wal_fetch(repo: Repository, source: str, name: str, dest: str) -> int:
    """restore_command: write archived file ``name`` to ``dest`` atomically; return its size."""
    payload = fetch_segment(repo, WAL, source, name)
    folder = os.path.dirname(os.path.abspath(dest))
    tmp = os.path.join(folder, f".drtool-fetch-{secrets.token_hex(6)}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except OSError as exc:
        _unlink(tmp)
        raise FetchFailed(f"cannot write {dest}: {exc.strerror}") from None
    return len(payload)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ----- MariaDB binlogs -------------------------------------------------------------------------------
def binlog_record(repo: Repository, src: mariadb.MariaSource, name: str, path: str, size: int,
                  file_name: str | None = None) -> Segment:
    """What the catalog needs of one binlog: times, positions, and the GTIDs it covers.

    ``gtid_start`` is the file's Gtid_list (the server's state before it; a
    domain the server never logged before starts just before its first GTID
    here), ``gtid_end`` that state after the file's own GTIDs: the planner
    chains files by these, across servers (``mariadb_gtid``).
    """
    info = mariadb.scan_binlog(path, src.bindir)
    start = gtid.parse_position(info.gtid_list)
    for domain, first in gtid.parse_position(",".join(info.first_by_domain.values())).items():
        start.setdefault(domain, (first[0], first[1] - 1))
    end = gtid.advance(start, gtid.parse_position(",".join(info.last_by_domain.values())))
    return Segment(source=src.name, kind=BINLOG, name=name,
                   object_id=segment_object_id(repo, BINLOG, src.name, name), size=size,
                   archived_at=datetime.now(timezone.utc), seq=mariadb.binlog_seq(name),
                   first_time=info.first_time, last_time=info.last_time, start_pos="4",
                   end_pos=str(info.end_pos),
                   extra={"first_gtid": info.first_gtid, "last_gtid": info.last_gtid,
                          "gtid_list": info.gtid_list, "events": info.events, "file": file_name or name,
                          "server_id": info.server_id, "gtid_start": gtid.format_position(start),
                          "gtid_end": gtid.format_position(end)})


def binlog_push(repo: Repository, src: mariadb.MariaSource) -> list[PushResult]:
    """Ship every closed binlog (all but the server's current one) not yet archived.

    Archived as ``s<server_id>-<file>``: after a switchover the new primary's
    files have the old primary's names.  A file archived by an older drtool
    under its bare name (same size) counts as archived.
    """
    logs, basename = mariadb.binary_logs(src)
    server = mariadb.server_id(src)
    results = []
    with tempfile.TemporaryDirectory(prefix="drtool-binlog-") as work:
        for file_name, size in logs[:-1]:
            name = gtid.archived_name(server, file_name)
            object_id = segment_object_id(repo, BINLOG, src.name, name)
            if _archived(repo, src.name, name, None):
                results.append(PushResult(name, "already-archived", size, object_id))
                continue
            if _archived(repo, src.name, file_name, size):  # by an earlier drtool, under the bare name
                results.append(PushResult(file_name, "already-archived", size,
                                          segment_object_id(repo, BINLOG, src.name, file_name)))
                continue
            path = mariadb.binlog_path(src, file_name, basename, work)
            with open(path, "rb") as handle:
                payload = handle.read()
            seg = binlog_record(repo, src, name, path, len(payload), file_name)
            results.append(PushResult(name, store_segment(repo, seg, payload), len(payload), object_id))
            if path.startswith(work):
                os.unlink(path)
    return results


def _archived(repo: Repository, source: str, name: str, size: int | None) -> bool:
    """Is ``name`` archived (with ``size`` given: a legacy bare-named file of exactly that size)?"""
    prefix = source_prefix(repo, BINLOG, source)
    object_id = segment_object_id(repo, BINLOG, source, name)
    if repo.backend.stat(object_name(prefix, object_id) + INFO_SUFFIX) is None:
        return False
    if size is None:
        return True
    try:
        return int(json.loads(repo.get_object(prefix, LOG_INFO_KIND, object_id + INFO_SUFFIX))["size"]) == size
    except (DrtoolError, ValueError, KeyError, TypeError):
        return False


# ----- catalog -------------------------------------------------------------------------------------------
def _info_objects(repo: Repository) -> dict[str, str]:
    """data object id → prefix, for every ``.info`` object in the repository (one LIST per kind)."""
    found: dict[str, str] = {}
    for kind in LOG_KINDS:
        for item in repo.backend.list(f"{kind}/"):
            parts = item.name.split("/")
            if len(parts) == 3 and parts[2].endswith(INFO_SUFFIX):
                found[parts[2][:-len(INFO_SUFFIX)]] = log_prefix(parts[0], parts[1])
    return found


def _load_info(repo: Repository, prefix: str, object_id: str) -> Segment:
    raw = json.loads(repo.get_object(prefix, LOG_INFO_KIND, object_id + INFO_SUFFIX))
    for key in ("archived_at", "first_time", "last_time"):
        if raw.get(key):
            raw[key] = datetime.fromisoformat(raw[key])
    return Segment(**{k: v for k, v in raw.items() if k in Segment.__dataclass_fields__})


def sync_log_segments(session: Session) -> LogCatalog:
    """Make the catalog list exactly the archived log files the repository holds."""
    from drtool.catalog.logs import LogCatalog
    logs = LogCatalog(session.catalog)
    present = _info_objects(session.repo)
    known = logs.known_object_ids()
    logs.remove(known - present.keys())
    new = []
    for object_id in sorted(present.keys() - known):
        try:
            new.append(_load_info(session.repo, present[object_id], object_id))
        except (DrtoolError, ValueError, TypeError) as exc:
            log.warning("skipping damaged log info object %s: %s", object_id[:16], exc)
    logs.add(new)
    return logs


def rebuild_log_segments(session: Session) -> int:
    """Catalog rebuild hook: drop and re-create every log_segments row from the repository."""
    from drtool.catalog.logs import LogCatalog
    logs = LogCatalog(session.catalog)
    logs.clear()
    sync_log_segments(session)
    return len(logs.known_object_ids())
