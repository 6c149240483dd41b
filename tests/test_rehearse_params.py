"""Drills parameterised, not edited (docs/rehearsals.md, "Variables"; runbooks/quarterly-dr-drill.md).

* ``[variables]`` with defaults and ``${name}`` in any string; ``rehearse --set
  NAME=VALUE``; undeclared names refused with file, line and key;
* the sandbox root from ``--sandbox-root``, then DRTOOL_SANDBOX_ROOT, $SANDBOX,
  ``[rehearse] sandbox_root``, never silently $TMPDIR when one of them is set;
* a database step that fails keeps the end of its server's log in the
  rehearsal record (catalog and repository) and the HTML report, and
  ``--keep`` says truthfully whether the server is running.
"""
from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest

import dbservers
from conftest import DrEnv
from drtool.errors import UsageError
from drtool.rehearse.runbook import parse_runbook

MEDIA = """\
    name = "media-${label}"
    source = "${source}"
    [variables]
    source = "media"
    label = "default"
    [[validations]]
    type = "files"
    [[validations]]
    name = "literal dollar and shell braces stay: $$5"
    type = "command"
    run = 'test "${DRTOOL_SANDBOX_TYPE}" = directory && test -f "$DRTOOL_SANDBOX_DIR/media/README"'
"""


def _populate(env: DrEnv) -> None:
    media = env.tmp / "media"
    media.mkdir()
    (media / "README").write_text("media store\n")
    (media / "photo.jpg").write_bytes(os.urandom(3000))
    for name in ("media", "files/media"):
        assert env.run("backup", str(media), "--name", name).code == 0


def _write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_set_overrides_defaults_and_is_recorded(repo_env: DrEnv) -> None:
    _populate(repo_env)
    path = _write(repo_env.tmp / "media.toml", MEDIA)
    env = {"SANDBOX": str(repo_env.tmp / "sandbox")}
    default = repo_env.run("rehearse", path, "--json", env=env)
    assert default.code == 0, default.out + default.err
    other = repo_env.run("rehearse", path, "--set", "source=files/media", "--set", "label=site-b", "--json", env=env)
    assert other.code == 0, other.out + other.err
    first, second = json.loads(default.out)[0], json.loads(other.out)[0]
    assert (first["runbook"], first["steps"][0]["source"]) == ("media-default", "media")
    assert (second["runbook"], second["steps"][0]["source"]) == ("media-site-b", "files/media")
    assert second["variables"] == {"source": "files/media", "label": "site-b"}
    assert second["steps"][0]["checks"][1]["name"] == "literal dollar and shell braces stay: $5"
    history = json.loads(repo_env.run("rehearsals", "--json").out)
    assert {"source": "files/media", "label": "site-b"} in [d.get("variables") for d in history]


def test_set_and_placeholders_are_checked_before_anything_runs(repo_env: DrEnv) -> None:
    _populate(repo_env)
    path = _write(repo_env.tmp / "media.toml", MEDIA)
    unknown = repo_env.run("rehearse", path, "--set", "sorce=media")
    assert unknown.code == 2 and "--set sorce: no runbook given declares a variable 'sorce'" in unknown.err
    malformed = repo_env.run("rehearse", path, "--set", "source")
    assert malformed.code == 2 and "expected NAME=VALUE" in malformed.err
    with pytest.raises(UsageError, match=r"x\.toml:2: source: \$\{sorce\} is not declared in \[variables\] "
                                         r"\(declared: label, source\)"):
        parse_runbook(textwrap.dedent(MEDIA).replace('"${source}"', '"${sorce}"'), "x.toml")
    with pytest.raises(UsageError, match=r"x\.toml:4: variables\.source: must be a string"):
        parse_runbook(textwrap.dedent(MEDIA).replace('source = "media"', "source = 3"), "x.toml")
    assert repo_env.run("rehearsals", "--json").out.strip() == "[]"


def test_sandbox_root_comes_from_option_env_sandbox_or_config(repo_env: DrEnv) -> None:
    _populate(repo_env)
    path = _write(repo_env.tmp / "media.toml", MEDIA)
    tmpdir, sandbox, option, configured = (repo_env.tmp / n for n in ("tmp", "sandbox", "option", "configured"))
    for folder in (tmpdir, sandbox, option, configured):
        folder.mkdir()
    config = repo_env.tmp / "drtool.toml"
    config.write_text(f'[rehearse]\nsandbox_root = "{configured}"\n')
    base = {"TMPDIR": str(tmpdir), "DRTOOL_CONFIG": str(config)}
    cases = [({}, ["--sandbox-root", str(option)], option, "--sandbox-root"),
             ({"SANDBOX": str(sandbox)}, ["--sandbox-root", str(option)], option, "--sandbox-root"),
             ({"SANDBOX": str(sandbox)}, [], sandbox, "$SANDBOX"),
             ({}, [], configured, "[rehearse] sandbox_root")]
    for extra, args, expected, why in cases:
        result = repo_env.run("rehearse", path, "--keep", *args, env={**base, **extra})
        assert result.code == 0, result.out + result.err
        assert f"sandboxes under {expected} ({why}" in result.out
        kept = [p for p in expected.iterdir() if p.name.startswith("drtool-rehearsal-")]
        assert len(kept) == 1, (why, list(expected.iterdir()))
        shutil.rmtree(kept[0])
    assert list(tmpdir.iterdir()) == []


# ----- a failing database step ------------------------------------------------------------------
def _failing_bindir(tmp: Path) -> Path:
    """PostgreSQL's programs, but a server that refuses to start (pg_ctl runs the 'postgres'
    next to it; initdb, psql and 'postgres -V' stay real)."""
    real = Path(dbservers.pg_bindir())
    fake = tmp / "pgbin"
    fake.mkdir()
    for name in ("initdb", "psql", "pg_restore"):
        (fake / name).symlink_to(real / name)
    shutil.copy2(real / "pg_ctl", fake / "pg_ctl")  # a copy: pg_ctl looks for postgres beside itself
    (fake / "postgres").write_text(
        f'#!/bin/sh\ncase "$1" in -V|--version) exec "{real}/postgres" "$@";; esac\n'
        'echo "FATAL:  injected startup failure: shared memory segment refused" >&2\nexit 1\n')
    (fake / "postgres").chmod(0o755)
    return fake


def _failing_pg_drill(env: DrEnv) -> str:
    dump = env.tmp / "services.sql"
    dump.write_text("CREATE TABLE orders (id int);\n")
    assert env.run("backup", "--from-command", f"cat {dump}", "--name", "pgdump", "--filename", "s.sql").code == 0
    config = dbservers.write_config(env.tmp / "drtool.toml", str(env.repo),
                                    {"pgdump": {"type": "postgresql", "dbname": "services",
                                                "bindir": str(_failing_bindir(env.tmp))}})
    env.env["DRTOOL_CONFIG"] = str(config)
    return _write(env.tmp / "pg.toml", """\
        source = "pgdump"
        sandbox = { type = "postgresql" }
        [[validations]]
        type = "sql"
        query = "SELECT count(*) FROM orders"
        expect = 0
    """)


def test_failed_server_log_is_kept_in_record_and_report(repo_env: DrEnv) -> None:
    path = _failing_pg_drill(repo_env)
    sandbox = repo_env.tmp / "sandbox"
    result = repo_env.run("rehearse", path, "--json", env={"SANDBOX": str(sandbox)})
    assert result.code == 1
    assert "injected startup failure" in result.err  # the log's end, printed while it still exists
    step = json.loads(result.out)[0]["steps"][0]
    assert step["status"] == "failed" and "starting the postgresql sandbox" in step["error"]
    assert "injected startup failure" in (step["server_log"] or "")
    assert [p for p in sandbox.iterdir()] == []  # the sandbox (and the log file) are gone...
    history = json.loads(repo_env.run("rehearsals", "--json").out)
    assert "injected startup failure" in history[-1]["steps"][0]["server_log"]  # ...the record keeps it
    report = repo_env.tmp / "report.html"
    assert repo_env.run("report", "--html", str(report)).code == 0
    assert "injected startup failure" in report.read_text()


def test_keep_says_the_server_is_not_running_when_it_did_not_start(repo_env: DrEnv) -> None:
    path = _failing_pg_drill(repo_env)
    sandbox = repo_env.tmp / "sandbox"
    result = repo_env.run("rehearse", path, "--keep", env={"SANDBOX": str(sandbox)})
    assert result.code == 1
    kept = next(line for line in result.out.splitlines() if "] kept pg: " in line)
    assert "server is not running" in kept and "running in" not in kept, kept
    log = kept.split("its log: ")[1].rstrip(")")
    assert "injected startup failure" in Path(log).read_text()  # kept, so the path is real
    for folder in sandbox.iterdir():
        shutil.rmtree(folder)
