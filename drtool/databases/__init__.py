"""Databases: point-in-time recovery of PostgreSQL and MariaDB.

Owns the database engines (``engine.py``: one :class:`DatabaseEngine` per
server type, with its log kind, base backups, naming, reachability rules,
replay and restore), the planner that picks a base and the log files for a
moment (``planner.py``), log archiving (``logarchive.py``, and the
asynchronous worker in ``archive_async.py``) and log retention
(``retention.py``).  Nothing outside this package branches on the engine.
"""
