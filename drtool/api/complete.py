"""Candidates for shell completion: snapshot ids, series and source names (README "Shell completion").

Completion runs on every <TAB>, so it must be instant, must never prompt
(no passphrase: deriving the key takes a second and may ask on a terminal),
and must never print an error into the user's command line.  It reads only
the config file and the catalog -- read-only, through the standard
library's sqlite3 (no SQLAlchemy import, no migration, no write).  The
catalog of a repository at its default location is found by the marker
``drtool.catalog.location.remember_repository`` leaves beside it; a catalog
named in the config or ``DRTOOL_CATALOG`` is used as is.  Anything that goes
wrong yields no candidates.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

from drtool.catalog.location import catalogs_of_repository, sqlite_path
from drtool.config import Settings, resolve

__all__ = ["series_names", "snapshot_candidates", "source_names"]
LIMIT = 500


def _settings(repo: str | None, config: str | None) -> Settings | None:
    try:
        return resolve(repo, config)
    except Exception:  # noqa: BLE001 - a broken config completes nothing, quietly
        return None


def _catalogs(settings: Settings) -> list[tuple[str | None, Path]]:
    """(repository id or None for "the only one in the file", catalog file) to read."""
    if settings.catalog:
        path = sqlite_path(settings.catalog, "")
        return [(None, path)] if path is not None else []
    if not settings.repository:
        return []
    return [(repo_id, path) for repo_id, path in catalogs_of_repository(settings.repository)]


def _query(path: Path, repo_id: str | None, sql: str) -> list[tuple[object, ...]]:
    if not path.is_file():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    try:
        if repo_id is None:
            ids = [r[0] for r in conn.execute("SELECT DISTINCT repo_id FROM snapshots LIMIT 2")]
            if len(ids) != 1:
                return []  # a shared catalog of several repositories: which one is unknown
            repo_id = ids[0]
        return conn.execute(sql, (repo_id,)).fetchall()
    finally:
        conn.close()


def _rows(repo: str | None, config: str | None, sql: str) -> list[tuple[object, ...]]:
    settings = _settings(repo, config)
    if settings is None:
        return []
    rows: list[tuple[object, ...]] = []
    for repo_id, path in _catalogs(settings):
        try:
            rows += _query(path, repo_id, sql)
        except (sqlite3.Error, OSError):
            continue
    return rows


def snapshot_candidates(repo: str | None, config: str | None, incomplete: str) -> list[tuple[str, str]]:
    """(short id, "series time") of the snapshots whose id starts with ``incomplete``, newest first;
    plus ``latest``."""
    rows = _rows(repo, config, f"SELECT id, name, time FROM snapshots WHERE repo_id = ? "
                               f"ORDER BY time DESC LIMIT {LIMIT}")
    found = [("latest", "the newest snapshot")] if "latest".startswith(incomplete) else []
    for snap_id, name, when in rows:
        text = str(snap_id)
        if text.startswith(incomplete):
            found.append((text[:8] if len(incomplete) <= 8 else text, f"{name} {str(when)[:19]}"))
    return found


def series_names(repo: str | None, config: str | None, incomplete: str) -> list[str]:
    """Snapshot series names (``--name``) starting with ``incomplete``."""
    rows = _rows(repo, config, "SELECT DISTINCT name FROM snapshots WHERE repo_id = ? ORDER BY name")
    return [str(r[0]) for r in rows if str(r[0]).startswith(incomplete)]


def source_names(repo: str | None, config: str | None, incomplete: str) -> list[str]:
    """Configured ``[sources.NAME]`` names, then other series in the repository."""
    settings = _settings(repo, config)
    configured = []
    if settings is not None:
        table = settings.data.get("sources")
        configured = sorted(table) if isinstance(table, dict) else []
    names = list(dict.fromkeys(configured + series_names(repo, config, incomplete)))
    return [n for n in names if n.startswith(incomplete)]
