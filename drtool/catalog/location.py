"""Where the catalog lives, without importing SQLAlchemy (a restore asks before deciding to open it)."""
from __future__ import annotations

import os
from pathlib import Path


def default_catalog_path(repo_id: str) -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "drtool" / repo_id / "catalog.sqlite"


def catalog_url(value: str | None, repo_id: str) -> str:
    """A bare path (or nothing) means SQLite; anything with '://' is an SQLAlchemy URL."""
    if value and "://" in value:
        return value
    path = Path(value) if value else default_catalog_path(repo_id)
    return f"sqlite:///{path.absolute()}"


def sqlite_path(value: str | None, repo_id: str) -> Path | None:
    """The catalog's file when it is SQLite, else None."""
    url = catalog_url(value, repo_id)
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None
