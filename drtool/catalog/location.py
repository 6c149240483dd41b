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


#: beside a default-location catalog: the repository it belongs to, so shell completion can find
#: the catalog of ``--repo`` without the key (the repository id is inside the encrypted config)
REPOSITORY_MARKER = "repository"


def normalized_location(url: str) -> str:
    return url if "://" in url else os.path.abspath(url)


def remember_repository(repo_id: str, url: str) -> None:
    """Write the marker when missing or stale; best effort (a read-only state directory is fine)."""
    marker = default_catalog_path(repo_id).parent / REPOSITORY_MARKER
    text = normalized_location(url) + "\n"
    try:
        if marker.parent.is_dir() and (not marker.exists() or marker.read_text(encoding="utf-8") != text):
            tmp = marker.with_name(f".{REPOSITORY_MARKER}.{os.getpid()}")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, marker)
    except (OSError, UnicodeDecodeError):
        pass


def catalogs_of_repository(url: str) -> list[tuple[str, Path]]:
    """(repository id, catalog file) of the default-location catalogs whose marker names ``url``."""
    base = default_catalog_path("x").parent.parent
    wanted = normalized_location(url) + "\n"
    found = []
    try:
        markers = sorted(base.glob(f"*/{REPOSITORY_MARKER}"))
    except OSError:
        return []
    for marker in markers:
        try:
            if marker.read_text(encoding="utf-8") == wanted:
                found.append((marker.parent.name, marker.parent / "catalog.sqlite"))
        except (OSError, UnicodeDecodeError):
            continue
    return found
