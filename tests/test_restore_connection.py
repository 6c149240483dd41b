"""The ``connection:`` line of a started PostgreSQL restore is a libpq connection string that
scripts pass to psql as is (runbooks/pitr-database.md); odd socket paths must survive quoting.
The end-to-end use is tests/test_runbook_docs.py (pitr-database.md)."""
from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from drtool.databases.postgresql import conninfo


@pytest.mark.parametrize("host", ["/srv/drtool-recovery/pg-restore", "/tmp/with space", "/tmp/it's",
                                  "/tmp/back\\slash", "/tmp/tab\there"])
def test_conninfo_round_trips_through_libpq_parsing(host: str) -> None:
    text = conninfo(host=host, port="5499")
    assert conninfo_to_dict(text + " dbname=services") == {"host": host, "port": "5499", "dbname": "services"}
