"""Secrets: empty passphrases refused, drtool's secrets kept from child processes, the password
command bounded in time (issue #15, item 5)."""
from __future__ import annotations

import ast
import json
import os
import stat
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, ROOT, DrEnv, make_env
from dbservers import maria_binary, mariadb_server, postgres_server, write_config
from drtool.childenv import child_environment, is_secret
from drtool.crypto.keys import wrap_master_key

SECRETS = {"DRTOOL_PASSWORD": PASSWORD, "DRTOOL_NEW_PASSWORD": "new secret", "DRTOOL_TO_PASSWORD": "to secret"}


def repo_files(env: DrEnv) -> list[str]:
    return sorted(str(p.relative_to(env.repo)) for p in env.repo.rglob("*") if p.is_file())


# ----- empty passphrases -------------------------------------------------------------------------
def test_init_refuses_an_empty_password_file(dr: DrEnv, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    result = dr.run("init", env={"DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_FILE": str(empty)})
    assert result.code == 2
    assert f"the password file {empty} is empty: an empty passphrase is refused" in result.err
    assert not (dr.repo / "config").exists() and not list(dr.repo.glob("keys/*"))
    newline_only = tmp_path / "newline"
    newline_only.write_bytes(b"\n")
    again = dr.run("init", env={"DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_FILE": str(newline_only)})
    assert again.code == 2 and "is empty" in again.err
    assert not (dr.repo / "config").exists()


def test_key_add_and_passwd_refuse_an_empty_passphrase(repo_env: DrEnv, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    slots = repo_files(repo_env)
    for command in (["key", "add"], ["key", "passwd"]):
        result = repo_env.run(*command, env={"DRTOOL_NEW_PASSWORD_FILE": str(empty)})
        assert result.code == 2, result.err
        assert "the new password file (DRTOOL_NEW_PASSWORD_FILE)" in result.err and "is empty" in result.err
        assert repo_files(repo_env) == slots  # no slot added, none removed
    missing = repo_env.run("key", "add", env={"DRTOOL_NEW_PASSWORD_FILE": str(tmp_path / "nope")})
    assert missing.code == 2 and "cannot read" in missing.err and "Traceback" not in missing.err
    assert repo_env.run("snapshots").code == 0  # the old passphrase still opens it
    with repo_env.session() as session:  # the API refuses too
        with pytest.raises(Exception, match="empty passphrase is refused"):
            session.repo.add_key_slot(b"", )


def test_a_repository_made_with_an_empty_passphrase_opens_only_when_asked(repo_env: DrEnv, tmp_path: Path) -> None:
    """An older version accepted a 0-byte passphrase file; such a key slot must stay usable."""
    with repo_env.session() as session:
        slot = wrap_master_key(session.repo.master, b"", label="old")
        session.repo.backend.put(f"keys/{slot.slot_id}", slot.to_bytes())
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    env = {"DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_FILE": str(empty)}
    refused = repo_env.run("snapshots", env=env)
    assert refused.code == 2 and "DRTOOL_INSECURE_EMPTY_PASSWORD=1" in refused.err
    allowed = repo_env.run("snapshots", env={**env, "DRTOOL_INSECURE_EMPTY_PASSWORD": "1"})
    assert allowed.code == 0, allowed.err


# ----- the password command ----------------------------------------------------------------------
def _processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(pid))
            except OSError:
                pass
    return found


def test_a_hanging_password_command_is_killed(repo_env: DrEnv) -> None:
    marker = "1000.4242"  # a shell child keeps the pipe open: this used to hang forever
    started = time.monotonic()
    result = repo_env.spawn("snapshots", env={"DRTOOL_PASSWORD": "",
                                              "DRTOOL_PASSWORD_COMMAND": f"sh -c 'sleep {marker}'",
                                              "DRTOOL_PASSWORD_COMMAND_TIMEOUT": "2"}, timeout=60)
    assert result.returncode == 2
    assert "the password command did not finish within 2s and was killed" in result.stderr
    assert time.monotonic() - started < 30
    assert _processes_with(marker) == []  # the whole process group is gone
    bad = repo_env.run("snapshots", env={"DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_COMMAND": "true",
                                         "DRTOOL_PASSWORD_COMMAND_TIMEOUT": "soon"})
    assert bad.code == 2 and "DRTOOL_PASSWORD_COMMAND_TIMEOUT" in bad.err
    empty = repo_env.run("snapshots", env={"DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_COMMAND": "true"})
    assert empty.code == 2 and "the password command's output is empty" in empty.err


def test_the_password_command_does_not_see_other_secrets(repo_env: DrEnv, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    command = f"sh -c 'env > {out}; echo \"{PASSWORD}\"'"
    result = repo_env.run("snapshots", env={"DRTOOL_PASSWORD": "", "DRTOOL_PASSWORD_COMMAND": command,
                                            "DRTOOL_NEW_PASSWORD": "new secret"})
    assert result.code == 0, result.err
    seen = out.read_text()
    assert "DRTOOL_REPOSITORY=" in seen and "PASSWORD" not in seen


# ----- children ------------------------------------------------------------------------------------
def restored_text(env: DrEnv, tmp_path: Path, name: str) -> str:
    target = tmp_path / f"restored-{name.replace('/', '-')}"
    result = env.run("restore", "latest", "--name", name, "--target", str(target))
    assert result.code == 0, result.err
    (path,) = [p for p in target.rglob("*") if p.is_file()]
    return path.read_text()


def test_from_command_children_get_no_secrets(repo_env: DrEnv, tmp_path: Path) -> None:
    pwfile = tmp_path / "pw"
    pwfile.write_text(PASSWORD)
    result = repo_env.run("backup", "--from-command", "env", "--name", "envdump",
                          env={**SECRETS, "DRTOOL_PASSWORD_FILE": str(pwfile),
                               "DRTOOL_TO_PASSWORD_COMMAND": "cat /secret",
                               "DRTOOL_TO_CATALOG": "postgresql+psycopg://backup:hunter2@db/catalog"})
    assert result.code == 0, result.err
    seen = restored_text(repo_env, tmp_path, "envdump")
    assert "DRTOOL_REPOSITORY=" in seen  # the environment was recorded
    for leaked in ("PASSWORD", "hunter2", PASSWORD, "new secret", "to secret"):
        assert leaked not in seen


def test_failure_hook_gets_no_secrets(repo_env: DrEnv, tmp_path: Path) -> None:
    seen = tmp_path / "hook-env"
    config = tmp_path / "drtool.toml"
    config.write_text(f'on_failure = {{ command = "env > {seen}" }}\n')
    result = repo_env.run("--config", str(config), "backup", "--from-command", "exit 3", "--name", "n",
                          env=SECRETS)
    assert result.code == 1
    text = seen.read_text()
    assert "DRTOOL_EXIT_CODE=1" in text and "PASSWORD" not in text and PASSWORD not in text


def test_child_environment_rules() -> None:
    env = child_environment({"EXTRA": "1"}, base={
        "PATH": "/bin", "DRTOOL_PASSWORD": "x", "DRTOOL_PASSWORD_FILE": "/f", "DRTOOL_PASSWORD_COMMAND": "c",
        "DRTOOL_NEW_PASSWORD_FILE": "/n", "DRTOOL_TO_PASSWORD": "t", "DRTOOL_REPOSITORY": "/r",
        "DRTOOL_CATALOG": "postgresql+psycopg://u:pw@h/db", "DRTOOL_TO_CATALOG": "/var/lib/c.sqlite",
        "PGPASSWORD": "kept for libpq callers to drop", "ST_KEY": "swift key", "OS_PASSWORD": "keystone"})
    assert env == {"PATH": "/bin", "DRTOOL_REPOSITORY": "/r", "DRTOOL_TO_CATALOG": "/var/lib/c.sqlite",
                   "PGPASSWORD": "kept for libpq callers to drop", "EXTRA": "1"}
    assert not is_secret("DRTOOL_CATALOG", "postgresql+psycopg://u@h/db")  # no password in it


def test_every_subprocess_call_gets_an_explicit_environment() -> None:
    """New spawn sites must go through drtool.childenv (inheriting os.environ would leak)."""
    missing = []
    for path in (ROOT / "drtool").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "subprocess"
                    and node.func.attr in ("run", "Popen", "call", "check_call", "check_output")
                    and not any(k.arg == "env" for k in node.keywords)):
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert missing == []


def _recording_wrapper(folder: Path, name: str, real: str, record: Path) -> None:
    script = folder / name
    script.write_text(f"#!/bin/sh\nenv > {record}\nexec {real} \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def test_database_dump_tools_get_no_secrets(tmp_path: Path) -> None:
    """pg_dump and mariadb-dump (real ones, behind a wrapper that records their environment)."""
    dr = make_env(tmp_path / "dr")
    dr.init()
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    with postgres_server() as pg, mariadb_server() as my:
        pg.sql("CREATE DATABASE wiki")
        my.sql("CREATE DATABASE wiki")
        _recording_wrapper(wrappers, "pg_dump", os.path.join(pg.bindir, "pg_dump"), tmp_path / "pg_dump.env")
        _recording_wrapper(wrappers, "mariadb-dump", maria_binary("mariadb-dump"), tmp_path / "mariadb-dump.env")
        config = write_config(tmp_path / "drtool.toml", str(dr.repo), {
            "pgwiki": pg.source(dbname="wiki", bindir=str(wrappers)),
            "mywiki": my.source(dbname="wiki", bindir=str(wrappers))})
        for source in ("pgwiki", "mywiki"):
            result = dr.run("--config", str(config), "backup", "--source", source, "--json",
                            env={**SECRETS, "DRTOOL_PASSWORD_FILE": str(tmp_path / "pw")})
            assert result.code == 0, result.err
    for tool in ("pg_dump", "mariadb-dump"):
        seen = (tmp_path / f"{tool}.env").read_text()
        assert "PATH=" in seen and "DRTOOL_PASSWORD" not in seen and PASSWORD not in seen, tool
        assert "new secret" not in seen and "to secret" not in seen
    pg_seen = (tmp_path / "pg_dump.env").read_text()
    assert "PGPASSFILE=" in pg_seen and "PGPASSWORD" not in pg_seen  # its own password by file
    assert sorted(s["name"] for s in json.loads(dr.run("snapshots", "--json").out)) == ["mywiki", "pgwiki"]
