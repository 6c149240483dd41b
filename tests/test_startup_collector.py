"""Start-up without the cyclic collector; the command itself runs with it (cli/entry.py).

Run as the console script runs: a fresh interpreter through ``drtool.cli.entry.run``,
with one extra command added to the real group that reports the collector's state from
inside the command.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import DrEnv

PROBE = r"""
import gc, json, sys
import click
from drtool.cli import entry
from drtool.cli.main import cli

seen = {}

@cli.command("probe-gc")
def probe_gc() -> None:
    seen.update(enabled=gc.isenabled(), frozen=gc.get_freeze_count())

sys.argv = ["drtool", *sys.argv[1:]]
try:
    entry.run()
except SystemExit as exc:
    seen["code"] = exc.code
    seen["after"] = gc.isenabled()
    print(json.dumps(seen))
"""


def probe(dr: DrEnv, *args: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], env=dr.env, capture_output=True, text=True,
                          timeout=120, cwd=dr.tmp)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_command_runs_with_the_collector_and_the_imports_frozen(dr: DrEnv) -> None:
    seen = probe(dr, "probe-gc")
    assert seen["code"] == 0 and seen["enabled"] is True, seen
    assert int(seen["frozen"]) > 10_000, seen  # click, SQLAlchemy and drtool's modules' objects
    assert seen["after"] is True


def test_a_command_that_ends_before_it_starts_leaves_the_collector_on(dr: DrEnv, tmp_path: Path) -> None:
    for args in (["--version"], ["no-such-command"], ["restore", "--bogus"]):
        seen = probe(dr, *args)
        assert seen["after"] is True and seen["code"] in (0, 2), (args, seen)
