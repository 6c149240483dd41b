"""Backups: file trees, command output, and the sources named in the configuration."""
from __future__ import annotations

from typing import Callable

from drtool.backup import run as _backup
from drtool.backup.configured import (CommandSource, FilesSource, backup_sources, get_source,
                                      source_type)
from drtool.backup.readers import FileOps, Reading
from drtool.backup.run import BackupResult
from drtool.core.session import Session
from drtool.databases.engine import source_engines
from drtool.monitor.notify import log_backup_summary

__all__ = ["BackupResult", "CommandSource", "FileOps", "Reading", "FilesSource", "backup", "backup_command", "backup_sources",
           "get_source", "log_backup_summary", "source_engines", "source_type"]


def backup(session: Session, paths: list[str], name: str, tags: list[str] | None = None,
           progress: Callable[..., None] | None = None, content_hash: str | None = None,
           reading: Reading | None = None) -> BackupResult:
    """``content_hash``: 'sha256' or 'sha1' records each file's hash (``drtool find --hash``);
    ``reading``: how many small files are read at once (default 8) and through what."""
    return _backup.backup_paths(session, paths, name, tags, progress, content_hash=content_hash,
                                reading=reading)


def backup_command(session: Session, command: str | list[str], name: str, filename: str | None = None,
                   tags: list[str] | None = None) -> BackupResult:
    return _backup.backup_command(session, command, name, filename or name.rsplit("/", 1)[-1], tags)
