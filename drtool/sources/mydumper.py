"""mydumper / myloader: parallel logical MariaDB dumps, one file per table (Debian's ``mydumper``).

``mydumper --trx-consistency-only`` takes a global read lock only while its
threads open consistent-snapshot transactions and it reads the binlog
coordinates, then dumps tables in parallel, each into its own files
(``DB.TABLE-schema.sql``, ``DB.TABLE.sql`` or ``DB.TABLE.NNNNN.sql``), with a
``metadata`` file holding the coordinates and, at the end, ``Finished dump
at``.  Output is not compressed: gzip stamps a time into every file, so an
unchanged table would never deduplicate between nights (the repository
compresses anyway).

Credentials reach both tools only through ``--defaults-file`` (they have no
``--defaults-extra-file``): the private option file ``client_options`` writes
already ``!include``s the user's own.
"""
from __future__ import annotations

import re
from typing import Any

from drtool.sources.mariadb import MariaSource, conn_args, find_binary

METADATA = "metadata"
SYSTEM_DATABASES = ("mysql", "sys", "performance_schema", "information_schema")
FINISHED = "Finished dump at"
_MASTER_RE = re.compile(r"SHOW MASTER STATUS:[ \t]*\n\s*Log: (\S+)[ \t]*\n\s*Pos: (\d+)[ \t]*\n\s*GTID:[ \t]*(\S*)")
_SLAVE_RE = re.compile(r"SHOW SLAVE STATUS:.*?GTID:[ \t]*(\S*)", re.DOTALL)


def defaults_option(opts: list[str]) -> list[str]:
    """``client_options``' leading option as the one form mydumper and myloader take.

    ``--no-defaults`` (a throwaway instance of drtool's own) becomes an empty
    option file: without any, the client library reads ``~/.my.cnf``.
    """
    out = []
    for opt in opts:
        if opt == "--no-defaults":
            out.append("--defaults-file=/dev/null")
        elif opt.startswith("--defaults-extra-file="):
            out.append("--defaults-file=" + opt.split("=", 1)[1])
        else:
            out.append(opt)
    return out


def dump_command(src: MariaSource, opts: list[str], outdir: str, threads: int) -> list[str]:
    cmd = [find_binary("mydumper", src.bindir), *defaults_option(opts), *conn_args(src), f"--outputdir={outdir}",
           f"--threads={threads}", "--trx-consistency-only", "--triggers", "--events", "--routines",
           "--verbose=1", *src.options]
    if src.all:
        return cmd + ["--regex", "^(?!(" + "|".join(SYSTEM_DATABASES) + r")\.)"]
    if src.databases:
        return cmd + ["--regex", "^(" + "|".join(re.escape(d) for d in src.databases) + r")\."]
    return cmd + ["--database", src.dbname or ""]


def load_command(server: MariaSource, opts: list[str], directory: str, threads: int,
                 target_db: str | None, binlog: bool) -> list[str]:
    """myloader of a dump directory; ``target_db``: every table into that database.

    ``binlog``: log the load (a database restored beside production must
    reach its replicas too, as the binlog replay after it will).
    """
    cmd = [find_binary("myloader", server.bindir), *defaults_option(opts), *conn_args(server),
           f"--directory={directory}", f"--threads={threads}", "--verbose=1"]
    if target_db:
        cmd.append(f"--database={target_db}")
    return cmd + (["--enable-binlog"] if binlog else [])


def parse_metadata(text: str) -> dict[str, Any]:
    """Binlog coordinates (and on a replica the primary's GTID) from mydumper's ``metadata``."""
    meta: dict[str, Any] = {}
    match = _MASTER_RE.search(text)
    if match:
        meta["binlog_file"], meta["binlog_pos"] = match.group(1), int(match.group(2))
        if match.group(3):
            meta["gtid_pos"] = match.group(3)
    slave = _SLAVE_RE.search(text)
    if slave and slave.group(1):
        meta["primary_gtid_pos"] = slave.group(1)
    return meta


def table_files(names: list[str], database: str, table: str) -> list[str]:
    """The files of one table in a dump directory (schema, data chunks, triggers) and its database's."""
    prefix = f"{database}.{table}"
    keep = {f"{database}-schema-create.sql", f"{prefix}-schema.sql", f"{prefix}.sql",
            f"{prefix}-schema-triggers.sql", METADATA}
    chunk = re.compile(re.escape(prefix) + r"\.\d+\.sql$")
    return [n for n in names if n in keep or chunk.match(n)]


def tables_of(names: list[str]) -> list[str]:
    """``DB.TABLE`` of every table schema file in a dump directory."""
    return sorted(n[:-len("-schema.sql")] for n in names if n.endswith("-schema.sql") and "." in n)
