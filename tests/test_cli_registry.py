"""The lazy command table in cli/main.py must name every command and its real module."""
from __future__ import annotations

import importlib

import click

from drtool.cli import main as cli_main


def test_command_table_matches_what_each_module_registers() -> None:
    registered: dict[str, str] = {}
    for module_name in cli_main.COMMAND_MODULES:
        probe = click.Group("probe")
        importlib.import_module(f"drtool.cli.commands.{module_name}").register(probe)
        for name in probe.commands:
            registered[name] = module_name
    assert registered == cli_main.COMMAND_MODULE_OF


def test_running_one_command_imports_only_its_module(capsys) -> None:  # type: ignore[no-untyped-def]
    cli_main._registered_modules.clear()
    cli_main.cli.commands.clear()
    assert cli_main.main(["snapshots", "--help"]) == 0
    assert cli_main._registered_modules == {"snapshots"}
    assert "Usage" in capsys.readouterr().out
    assert cli_main.main(["--help"]) == 0
    assert cli_main._registered_modules == set(cli_main.COMMAND_MODULES)
    assert "rehearse" in capsys.readouterr().out


def test_unknown_command_still_suggests_a_close_match(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli_main.main(["snapshot"]) == 2
    assert "snapshots" in capsys.readouterr().err


def test_every_command_module_is_a_noun_of_its_own() -> None:
    """One module per top-level command or group: no module registers commands of unrelated nouns."""
    modules = set(cli_main.COMMAND_MODULE_OF.values())
    assert all(name in cli_main.COMMAND_MODULE_OF for name in modules), \
        "each command module is named after a command it registers"


def test_the_pg_commands_and_the_async_spool_import_no_repository_or_catalog() -> None:
    """An asynchronous wal-push only hands a segment to the spool: it must start in a blink."""
    import subprocess
    import sys
    probe = ("import sys\nfrom drtool.cli import main\nmain._register_module('pg')\n"
             "import drtool.api.log_shipping\n"
             "print(' '.join(m for m in sys.modules if m.startswith(('drtool.repository', 'drtool.catalog', "
             "'drtool.restore', 'sqlalchemy', 'zstandard'))))")
    heavy = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                           env={"PATH": "/usr/bin:/bin"}).stdout.split()
    assert heavy == [], heavy
