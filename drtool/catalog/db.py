"""Opening the catalog: URL resolution, SQLite tuning, integrity, migrations.

SQLite runs in WAL mode with ``synchronous=NORMAL``: the catalog is a cache
of the repository, so losing the last transaction on power loss costs a
re-sync, never data.  A damaged file is reported with the fix, ``drtool
catalog rebuild``: by the full check on open (``PRAGMA quick_check``, run
when ``integrity.reason_to_check`` gives a reason or the command asks), and
by any query that meets a damaged page (``_on_error``).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import ArgumentError, DatabaseError, NoSuchModuleError, OperationalError

from drtool.catalog import integrity
from drtool.catalog.location import catalog_url, default_catalog_path
from drtool.catalog.peek import MIGRATIONS, head_revision
from drtool.errors import CatalogError, ConfigError

__all__ = ["catalog_url", "default_catalog_path", "head_revision", "open_engine"]

log = logging.getLogger("drtool")


SUPPORTED_DIALECTS = ("sqlite", "postgresql")


def check_url(url: str, explicit: bool) -> None:
    """Refuse catalog settings drtool cannot use, with the reason (exit 2), before connecting.

    ``explicit``: the path was configured (DRTOOL_CATALOG / ``catalog``), so
    a missing directory is a typo to report, not something to create -- a
    new empty catalog elsewhere would silently lose the run history and the
    memory of committed snapshots.  The default location is created.
    """
    dialect = url.split("://", 1)[0].split("+", 1)[0].lower()
    if dialect not in SUPPORTED_DIALECTS:
        raise ConfigError(f"unsupported catalog URL scheme {dialect!r}",
                          hint="the catalog is a file path (SQLite) or postgresql+psycopg://user@host/db; "
                               "check DRTOOL_CATALOG / the config's catalog")
    if dialect != "sqlite" or not explicit:
        return
    parent = Path(url.removeprefix("sqlite:///")).parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise ConfigError(f"the catalog's directory {parent} {what}",
                          hint="create it, or fix DRTOOL_CATALOG / the config's catalog")


def _prepare_sqlite_file(url: str) -> Path:
    path = Path(url.removeprefix("sqlite:///"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(path, 0o600)
    except OSError as exc:
        raise CatalogError(f"the catalog {path} cannot be created: {exc.strerror}",
                           hint="check DRTOOL_CATALOG / XDG_STATE_HOME and the permissions of its "
                                "directory") from None
    return path


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_engine(url: str, replace_damaged: bool = False, explicit: bool = False,
                full_check: bool = False) -> Engine:
    """An engine on a usable, migrated catalog.

    ``full_check`` (``drtool check``, ``catalog rebuild``): check every page
    of an SQLite catalog now, whatever ``integrity.reason_to_check`` says.

    ``replace_damaged`` (``drtool catalog rebuild``): a damaged SQLite file is
    moved aside (``catalog.sqlite.damaged-<time>``, kept for inspection) and
    a new one created, so the command every error message recommends also
    works when the file is beyond repair.  Only damage counts: a catalog
    that is locked or unreadable is never moved.
    """
    check_url(url, explicit)
    try:
        return _open_engine(url, full_check or replace_damaged)
    except _DamagedCatalog:
        if not (replace_damaged and url.startswith("sqlite:")):
            raise
        path = Path(url.removeprefix("sqlite:///"))
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
        integrity.forget_check(path)
        log.warning("the damaged catalog was moved to %s; a new one is built", aside)
        return _open_engine(url, True)


class _DamagedCatalog(CatalogError):
    """Not an SQLite database, or pages that fail the integrity check."""


def _open_engine(url: str, full_check: bool) -> Engine:
    is_sqlite = url.startswith("sqlite:")
    path = _prepare_sqlite_file(url) if is_sqlite else None
    why = ("asked for" if full_check else integrity.reason_to_check(path)) if path is not None else None
    try:
        engine = create_engine(url, future=True, pool_pre_ping=not is_sqlite)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"the catalog URL cannot be used: {_short(exc)}",
                          hint="the catalog is a file path (SQLite) or postgresql+psycopg://user@host/db "
                               "(pip install drtool[postgresql])") from None
    if path is not None:
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "handle_error", _damage_reporter(path))
    try:
        with engine.connect() as conn:
            if path is not None and why is not None:
                log.debug("full check of the catalog %s: %s", path, why)
                result = conn.execute(text("PRAGMA quick_check")).scalar()
                if result != "ok":
                    integrity.forget_check(path)
                    raise _DamagedCatalog(f"the catalog {path} is damaged ({result})")
            _migrate(conn)
        if path is not None and why is not None:
            integrity.record_check(path)
    except CatalogError:
        engine.dispose()
        raise
    except (DatabaseError, OperationalError) as exc:
        engine.dispose()
        where = path or url.split("@")[-1]
        message = f"the catalog {where} cannot be used: {_short(exc)}"
        damaged = is_sqlite and not isinstance(exc, OperationalError) and any(
            sign in _short(exc) for sign in ("not a database", "malformed"))
        raise (_DamagedCatalog if damaged else CatalogError)(message) from None
    return engine


#: what SQLite says of a file that is damaged (SQLITE_CORRUPT, SQLITE_NOTADB), not merely busy or locked
DAMAGE_SIGNS = ("malformed", "not a database")


def _damage_reporter(path: Path):  # type: ignore[no-untyped-def]
    """A ``handle_error`` hook: a damaged page met by any query, long after the open, is the
    catalog's damage -- the one-line error with the rebuild hint, not a driver traceback."""
    def on_error(context) -> None:  # type: ignore[no-untyped-def]
        exc = context.original_exception
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError) \
                and any(sign in str(exc) for sign in DAMAGE_SIGNS):
            integrity.forget_check(path)  # the next open checks every page
            raise _DamagedCatalog(f"the catalog {path} is damaged ({_short(exc)})")
    return on_error


MIGRATION_LOCK = 0x64727463  # "drtc": PostgreSQL advisory lock key for schema upgrades


def _at_head(conn) -> bool:  # type: ignore[no-untyped-def]
    if not inspect(conn).has_table("alembic_version"):
        return False
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()


def _migrate(conn) -> None:  # type: ignore[no-untyped-def]
    """Run alembic only when the schema is not at head (alembic import is slow).

    On a shared PostgreSQL catalog many hosts may open an old (or empty)
    schema at the same moment; without serialisation all but one fail with
    duplicate-key errors from the system catalogs.  A transaction-scoped
    advisory lock lets one upgrade while the others wait, then find it done.
    """
    if _at_head(conn):
        return
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        if _at_head(conn):
            conn.commit()
            return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
    conn.commit()


def _short(exc: Exception) -> str:
    text_ = str(getattr(exc, "orig", exc)) or type(exc).__name__
    return text_.splitlines()[0]
