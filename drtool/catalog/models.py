"""Catalog tables.  Every row carries ``repo_id`` so one shared catalog (for
example on PostgreSQL) can serve many repositories and many hosts.

Everything here except ``runs``, rehearsal history and ``seen_objects`` is a cache of the
repository and can be rebuilt from it with ``drtool catalog rebuild``.

The tables are SQLAlchemy Core ``Table`` objects, not ORM classes: every
query here is a plain SELECT/INSERT/UPDATE/DELETE, and importing the ORM
cost every command ~0.15 s of start-up and ~14 MiB of memory (measured:
``import drtool.catalog.store`` 0.55 s / 52 MiB with the ORM, 0.36 s / 38
MiB without).  The schema itself is defined by the alembic migrations; these
definitions must name the same columns.
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Column, DateTime, Float, Index, Integer, LargeBinary, MetaData, String,
                        Table, Text)

metadata = MetaData()

snapshot_table = Table(
    "snapshots", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("name", String(255), index=True),
    Column("host", String(255)),
    Column("time", DateTime(timezone=True), index=True),
    Column("kind", String(32)),
    Column("parent", String(64), nullable=True),
    Column("tree", String(64)),
    Column("size", BigInteger, default=0),
    Column("files", BigInteger, default=0),
    Column("bytes_added", BigInteger, default=0),
    Column("manifest", Text),
)

index_file_table = Table(
    "index_files", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("index_id", String(64), primary_key=True),
)

# One pack's trailer entries, packed binary: far smaller than a row per blob.
index_pack_table = Table(
    "index_packs", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("index_id", String(64), primary_key=True),
    Column("pack_id", String(64), primary_key=True),
    Column("entries", LargeBinary),
)

# Memory of every snapshot and index object this catalog saw committed, and
# what became of it (present / forgotten by drtool / vanished without a
# tombstone).  History, not cache: ``catalog rebuild`` keeps it.
seen_table = Table(
    "seen_objects", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("object_id", String(64), primary_key=True),
    Column("label", Text, default=""),
    Column("first_seen", DateTime(timezone=True)),
    Column("state", String(16), default="present"),
    Column("state_time", DateTime(timezone=True), nullable=True),
    Column("note", Text, default=""),
)
Index("ix_seen_objects_state", seen_table.c.repo_id, seen_table.c.state)

# History of commands (backup, restore, check, prune): not rebuildable.
run_table = Table(
    "runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo_id", String(64), index=True),
    Column("command", String(32)),
    Column("name", String(255), nullable=True),
    Column("host", String(255)),
    Column("started", DateTime(timezone=True)),
    Column("finished", DateTime(timezone=True), nullable=True),
    Column("status", String(16)),
    Column("exit_code", Integer, default=0),
    Column("snapshot_id", String(64), nullable=True),
    Column("bytes_added", BigInteger, default=0),
    Column("message", Text, default=""),
    Column("stats", Text, default="{}"),
)
Index("ix_runs_repo_command", run_table.c.repo_id, run_table.c.command, run_table.c.started)

# One archived log file of one source (WAL segment, history file, binlog).
log_segment_table = Table(
    "log_segments", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("object_id", String(64), primary_key=True),
    Column("source", String(255)),
    Column("kind", String(16)),
    Column("name", String(255)),
    Column("timeline", Integer, nullable=True),
    Column("seq", BigInteger, nullable=True),
    Column("first_time", DateTime(timezone=True), nullable=True),
    Column("last_time", DateTime(timezone=True), nullable=True),
    Column("start_pos", String(64), nullable=True),
    Column("end_pos", String(64), nullable=True),
    Column("size", BigInteger, default=0),
    Column("archived_at", DateTime(timezone=True)),
    Column("extra", Text, default="{}"),
)
Index("ix_log_segments_source", log_segment_table.c.repo_id, log_segment_table.c.source,
      log_segment_table.c.kind, log_segment_table.c.seq)

rehearsal_table = Table(
    "rehearsals", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("runbook", String(255), index=True),
    Column("host", String(255)),
    Column("started", DateTime(timezone=True), index=True),
    Column("finished", DateTime(timezone=True)),
    Column("status", String(16)),
    Column("rto_seconds", Float, nullable=True),
    Column("rpo_seconds", Float, nullable=True),
    Column("document", Text),
)

rehearsal_step_table = Table(
    "rehearsal_steps", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("rehearsal_id", String(64), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("name", String(255)),
    Column("source", String(255), index=True),
    Column("snapshot_id", String(64), nullable=True),
    Column("started", DateTime(timezone=True), index=True),
    Column("status", String(16)),
    Column("rto_seconds", Float, nullable=True),
    Column("rpo_seconds", Float, nullable=True),
)

# The file index's short repository key (migration 0007): ``file_versions`` rows and their index
# entries carry this integer instead of the 32-64 character ``repo_id``, which was ~60 bytes of
# every row and of each of its index entries (a first snapshot of 1,000,000 files wrote a
# catalog of 414 MB instead of 196 MB, and ~25 % more CPU to insert it).
file_index_repo_table = Table(
    "file_index_repos", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo_id", String(64), nullable=False, unique=True),
)

# Per-file index for ls/find (browse): one row per file *version*, valid in the snapshots of its
# series whose position ``seq`` is in [first_seq, end_seq) (end_seq NULL: still present).
# A cache of the snapshot trees: ``catalog rebuild`` recreates it.
file_version_table = Table(
    "file_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo_key", Integer, nullable=False),  # file_index_repos.id
    Column("series", String(255), nullable=False),
    Column("path", Text, nullable=False),
    Column("basename", Text, nullable=False),
    Column("type", String(16)),
    Column("size", BigInteger, default=0),
    Column("mtime_ns", BigInteger, default=0),
    Column("mode", Integer, default=0),
    Column("content", String(64), default=""),
    Column("hash", String(160), nullable=True),
    Column("first_seq", Integer, nullable=False),
    Column("end_seq", Integer, nullable=True),
)
Index("ix_file_versions_path", file_version_table.c.repo_key, file_version_table.c.series,
      file_version_table.c.path, file_version_table.c.end_seq)
Index("ix_file_versions_basename", file_version_table.c.repo_key, file_version_table.c.basename)
# Partial (WHERE hash IS NOT NULL) in the migrations that create it (0005, 0007).  Not said here:
# ``postgresql_where`` makes SQLAlchemy import its PostgreSQL dialect on every catalog open
# (~45 ms of every command's start-up), and these definitions never create the schema.
Index("ix_file_versions_hash", file_version_table.c.repo_key, file_version_table.c.hash)

# Which snapshots the file index covers, and each one's position in its series.  A row per
# snapshot: it keeps ``repo_id`` (nothing to gain from the short key, and the snapshot join).
file_index_snapshot_table = Table(
    "file_index_snapshots", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("snapshot_id", String(64), primary_key=True),
    Column("series", String(255), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("tree", String(64)),
    Column("time", DateTime(timezone=True)),
)
Index("ix_file_index_snapshots_series", file_index_snapshot_table.c.repo_id,
      file_index_snapshot_table.c.series, file_index_snapshot_table.c.seq, unique=True)

# Audit trail of ``drtool rewrite`` (takedowns): history, not cache; ``catalog rebuild`` keeps it.
rewrite_table = Table(
    "rewrites", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("repo_id", String(64), index=True),
    Column("time", DateTime(timezone=True)),
    Column("host", String(255)),
    Column("command", Text, default=""),
    Column("reason", Text, default=""),
    Column("excluded", Text, default="[]"),
    Column("original_id", String(64)),
    Column("new_id", String(64), nullable=True),
    Column("outcome", Text, default=""),
)

# Snapshot sets of sharded sources (migration 0006): coordination of the workers, not a cache.
# The repository's record of a set is each shard snapshot's ``meta["set"]``; these rows say
# which set is being made and who holds which shard.  At most one open set per source.
snapshot_set_table = Table(
    "snapshot_sets", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("id", String(64), primary_key=True),
    Column("source", String(255), nullable=False),
    Column("shards", Integer, nullable=False),
    Column("state", String(16), nullable=False),          # open | committed | failed
    Column("created", DateTime(timezone=True)),
    Column("finished", DateTime(timezone=True), nullable=True),
    Column("host", String(255)),
    Column("note", Text, default=""),
)
# ix_snapshot_sets_open: unique (repo_id, source) WHERE state = 'open', created by migration 0006 and
# not repeated here: its ``postgresql_where`` would import SQLAlchemy's PostgreSQL dialect on every
# catalog open (~45 ms of start-up; see ix_file_versions_hash).

# One row per shard of a set: its lease (owner, token, expiry in epoch seconds of the catalog's clock).
shard_lease_table = Table(
    "shard_leases", metadata,
    Column("repo_id", String(64), primary_key=True),
    Column("set_id", String(64), primary_key=True),
    Column("shard", Integer, primary_key=True),
    Column("state", String(16), nullable=False),          # todo | leased | done | failed
    Column("owner", String(255), nullable=True),
    Column("token", String(64), nullable=True),
    Column("expires", Float, nullable=True),
    Column("snapshot_id", String(64), nullable=True),
    Column("attempts", Integer, default=0),
    Column("errors", Integer, default=0),
    Column("error", Text, default=""),
)
