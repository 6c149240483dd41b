"""The environment drtool hands to the programs it runs: without drtool's secrets.

Dump commands (``--from-command``, pg_dump, mariadb-dump), the password
command, notification hooks, rehearsal checks and database servers started
for a restore all run with drtool's environment minus every variable that
unlocks something: the passphrases (``DRTOOL_*PASSWORD*``: the passphrase
itself, its file and its command, the new and the copy destination's), a
catalog URL that carries a database password, and the Swift source's key.  A hook that needs drtool
itself must be given its own ``DRTOOL_PASSWORD_FILE``.

Every ``subprocess`` call in drtool passes ``env=`` built here
(``tests/test_secrets.py`` keeps it so).  Layer 0: used by config, sources
and ops alike.
"""
from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import urlsplit

CATALOG_VARIABLES = ("DRTOOL_CATALOG", "DRTOOL_TO_CATALOG")
# The Swift source's key (tempauth) and password (Keystone): no child of drtool needs them.  The
# AWS_* variables stay: a PostgreSQL server started for a restore runs 'drtool pg wal-fetch', which
# reads an S3 repository with them.
SOURCE_SECRETS = ("ST_KEY", "OS_PASSWORD")


def is_secret(name: str, value: str) -> bool:
    if name.startswith("DRTOOL_") and "PASSWORD" in name or name in SOURCE_SECRETS:
        return True
    if name in CATALOG_VARIABLES and "://" in value:
        try:
            return urlsplit(value).password is not None
        except ValueError:
            return True  # unparsable: better gone than leaked
    return False


def child_environment(extra: Mapping[str, str] | None = None,
                      base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) without secrets, plus ``extra``."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not is_secret(k, v)}
    if extra:
        env.update(extra)
    return env


# Process groups of helpers that drtool waits for (the password command): an
# interrupt during start-up ends them too, instead of leaving them behind.
running_groups: set[int] = set()


def kill_running_groups() -> None:
    import signal
    for pgid in list(running_groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
