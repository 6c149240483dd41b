"""The light half of log archiving: the asynchronous archive_command's spool.

``drtool pg wal-push`` with ``archive_async = true`` only hands a segment to
the spool; it must start in a fraction of a second, so this module imports
no repository, catalog or engine.
"""
from __future__ import annotations

from drtool.databases.archive_async import DEFAULT_PARALLEL, Spool, push_async, run_worker, trim_log

__all__ = ["DEFAULT_PARALLEL", "Spool", "push_async", "run_worker", "trim_log"]
