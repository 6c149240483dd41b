"""Shell completion through click's own mechanism (``_DRTOOL_COMPLETE``), run against the real CLI
in bash and zsh: snapshot ids and source names come from the catalog and the config, read-only,
without the passphrase, and nothing is ever printed on a broken setup but an empty answer."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DrEnv


@pytest.fixture
def shell_env(repo_env: DrEnv, tmp_path: Path) -> tuple[DrEnv, dict[str, str], list[str]]:
    """Two series backed up; a config naming two sources; a `drtool` on PATH; no passphrase at all."""
    for name in ("media", "db-wiki"):
        src = tmp_path / name
        src.mkdir()
        (src / "f").write_text(name)
        assert repo_env.run("backup", str(src), "--name", name).code == 0
    config = tmp_path / "drtool.toml"
    config.write_text('[sources.media]\ntype = "files"\npaths = ["/srv/media"]\n'
                      '[sources.pg-main]\ntype = "postgresql"\ndbname = "app"\n')
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "drtool").write_text(f'#!/bin/sh\nexec {sys.executable} -m drtool "$@"\n')
    (bindir / "drtool").chmod(0o755)
    fifo = tmp_path / "passphrase.fifo"
    os.mkfifo(fifo)  # reading it blocks forever: a completion that reads the passphrase times out
    env = {k: v for k, v in repo_env.env.items() if k != "DRTOOL_PASSWORD"}
    env.update(DRTOOL_CONFIG=str(config), PATH=f"{bindir}:{os.environ['PATH']}",
               DRTOOL_PASSWORD_FILE=str(fifo))
    with repo_env.session() as session:
        ids = [s.id for s in session.snapshots()]
    return repo_env, env, ids


def complete(env: dict[str, str], line: str, shell: str = "bash") -> tuple[list[str], str]:
    words = line.split(" ")
    proc = subprocess.run([sys.executable, "-m", "drtool"], capture_output=True, text=True, timeout=30,
                          env={**env, "_DRTOOL_COMPLETE": f"{shell}_complete", "COMP_WORDS": line,
                               "COMP_CWORD": str(len(words) - 1)}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines(), proc.stderr


def test_snapshot_ids_and_source_names_complete(shell_env: tuple[DrEnv, dict[str, str], list[str]],
                                                tmp_path: Path) -> None:
    _dr, env, ids = shell_env
    out, err = complete(env, "drtool restore ")
    assert err == "" and out[0] == "plain,latest"
    assert {line.split(",", 1)[1] for line in out[1:]} == {i[:8] for i in ids}
    out, _ = complete(env, f"drtool restore {ids[1][:3]}")
    assert [line.split(",", 1)[1] for line in out] == [ids[1][:8]]
    out, _ = complete(env, "drtool forget ")
    assert len(out) == 3
    out, _ = complete(env, "drtool backup --source ")
    assert [line.split(",", 1)[1] for line in out] == ["media", "pg-main", "db-wiki"]
    out, _ = complete(env, "drtool status --source p")
    assert out == ["plain,pg-main"]
    out, _ = complete(env, "drtool snapshots --name d")
    assert out == ["plain,db-wiki"]
    out, _ = complete(env, "drtool pg wal-push --source ")
    assert "plain,pg-main" in out
    out, _ = complete(env, "drtool reh")
    assert [line.split(",", 1)[1] for line in out] == ["rehearsals", "rehearse"]


def test_default_catalog_is_found_by_its_repository(tmp_path: Path, repo_env: DrEnv) -> None:
    """Without DRTOOL_CATALOG the catalog sits under XDG_STATE_HOME/drtool/<repo id>/: found by --repo."""
    env = {k: v for k, v in repo_env.env.items() if k != "DRTOOL_CATALOG"}
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    assert repo_env.run("backup", str(src), "--name", "media", env={"DRTOOL_CATALOG": ""}).code == 0
    repo = env.pop("DRTOOL_REPOSITORY")
    env.pop("DRTOOL_PASSWORD")
    out, _ = complete(env, f"drtool --repo {repo} restore ")
    assert out[0] == "plain,latest" and len(out) == 2
    assert complete(env, f"drtool --repo {tmp_path / 'other'} restore ")[0] == ["plain,latest"]


def test_broken_setups_complete_nothing_quietly(shell_env: tuple[DrEnv, dict[str, str], list[str]],
                                               tmp_path: Path) -> None:
    _dr, env, _ids = shell_env
    bad = tmp_path / "bad.toml"
    bad.write_text("this is [not toml")
    for broken in ({"DRTOOL_CONFIG": str(bad)}, {"DRTOOL_CATALOG": str(tmp_path / "nothing.sqlite")},
                   {"DRTOOL_CATALOG": str(bad)}):
        out, err = complete({**env, **broken}, "drtool restore ")
        assert out == ["plain,latest"] and err == ""


def test_bash_and_zsh_scripts_complete_in_the_real_shells(
        shell_env: tuple[DrEnv, dict[str, str], list[str]]) -> None:
    _dr, env, ids = shell_env
    bash = subprocess.run(["bash", "-c", 'source <(_DRTOOL_COMPLETE=bash_source drtool)\n'
                                         'COMP_WORDS=(drtool restore ""); COMP_CWORD=2\n'
                                         '_drtool_completion drtool\nprintf "%s\\n" "${COMPREPLY[@]}"'],
                          env=env, capture_output=True, text=True, timeout=60)
    assert bash.returncode == 0, bash.stderr
    assert set(bash.stdout.split()) == {"latest", *(i[:8] for i in ids)}
    zsh_script = (
        'autoload -U compinit && compinit -u -D\n'
        'source <(_DRTOOL_COMPLETE=zsh_source drtool)\n'
        '[[ $_comps[drtool] == _drtool_completion ]] || { print "not registered"; exit 3; }\n'
        '_describe() { print -l -- ${completions_with_descriptions%%:*} }\n'
        'compadd() { print -l -- $completions }\n'
        'words=(drtool backup --source ""); CURRENT=4\n'
        '_drtool_completion\n')
    zsh = subprocess.run(["zsh", "-f", "-c", zsh_script], env=env, capture_output=True, text=True, timeout=60)
    assert zsh.returncode == 0, zsh.stdout + zsh.stderr
    assert zsh.stdout.split() == ["media", "pg-main", "db-wiki"]
