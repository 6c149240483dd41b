"""[sources.NAME] tables are validated before anything runs: typos, inline passwords,
ambiguous database choices are usage errors naming the table."""
from __future__ import annotations

import pytest

from drtool.errors import ConfigError
from drtool.sources.mariadb import MariaSource
from drtool.sources.postgres import PgSource


@pytest.mark.parametrize("cls", [PgSource, MariaSource])
def test_unknown_key_names_the_table_and_the_key(cls: type) -> None:
    with pytest.raises(ConfigError) as err:
        cls.from_config("wiki", {"dbname": "wiki", "hots": "db1"})
    assert "[sources.wiki]" in str(err.value) and "hots" in str(err.value)


@pytest.mark.parametrize("cls", [PgSource, MariaSource])
def test_inline_password_is_refused(cls: type) -> None:
    with pytest.raises(ConfigError) as err:
        cls.from_config("wiki", {"dbname": "wiki", "password": "hunter2"})
    assert "password_file" in str(err.value) and "hunter2" not in str(err.value)


@pytest.mark.parametrize("cls", [PgSource, MariaSource])
@pytest.mark.parametrize("table", [{}, {"dbname": "a", "all": True}, {"dbname": "a", "databases": ["b"]}])
def test_exactly_one_database_choice(cls: type, table: dict) -> None:
    with pytest.raises(ConfigError, match="exactly one of dbname, databases or all"):
        cls.from_config("wiki", table)


def test_valid_tables_parse() -> None:
    assert PgSource.from_config("svc", {"dbname": "svc", "port": 5433}).port == 5433
    assert MariaSource.from_config("wiki", {"all": True, "socket": "/run/mysqld.sock"}).all


def test_mydumper_method_and_threads() -> None:
    src = MariaSource.from_config("wiki", {"dbname": "wiki", "method": "mydumper", "threads": 8})
    assert (src.method, src.threads) == ("mydumper", 8)
    assert MariaSource.from_config("wiki", {"dbname": "wiki"}).threads == 4
    for bad in (0, 257, "8", True):
        with pytest.raises(ConfigError, match=r"\[sources.wiki\]: threads must be a whole number from 1 to 256"):
            MariaSource.from_config("wiki", {"dbname": "wiki", "method": "mydumper", "threads": bad})


def test_subpage_is_a_physical_switch_on_by_default() -> None:
    assert MariaSource.from_config("wiki", {"method": "physical"}).subpage is True
    assert MariaSource.from_config("wiki", {"method": "physical", "subpage": False}).subpage is False
    for table in ({"method": "physical", "subpage": "no"}, {"dbname": "wiki", "subpage": False}):
        with pytest.raises(ConfigError, match=r"\[sources.wiki\]: subpage is true or false, for method"):
            MariaSource.from_config("wiki", table)
