"""Databases: archiving logs, recoverable windows and point-in-time restores."""
from __future__ import annotations

from drtool.databases.engine import RestoreRequest as DatabaseRestoreRequest
from drtool.databases.engine import engine_named, source_engines
from drtool.databases.logarchive import FetchFailed, SegmentNotArchived, binlog_push, wal_fetch, wal_push
from drtool.databases.planner import plan_from_config, recoverable_window, restore_pitr

__all__ = ["DatabaseRestoreRequest", "FetchFailed", "SegmentNotArchived", "binlog_push", "engine_named",
           "plan_from_config", "recoverable_window", "restore_pitr", "source_engines", "wal_fetch", "wal_push"]
