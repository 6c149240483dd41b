"""Shared fixtures: real repositories on the real file system, the CLI run
in-process (fast) or as a subprocess (for kill tests)."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from drtool import api

ROOT = Path(__file__).resolve().parent.parent
# The blob index's disk cache (repository/diskindex.py) goes under XDG_CACHE_HOME: keep the tests'
# caches out of the home directory (one directory per test process; per repository id inside).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="drtool-test-cache-")
PASSWORD = "correct horse battery staple"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@dataclass
class DrEnv:
    """A repository directory, catalog file and environment for one test."""

    tmp: Path
    repo: Path
    catalog: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """Run the CLI in-process with this environment (monkeypatch-free: os.environ swap)."""
        from drtool.cli.main import main

        full = {**self.env, **(env or {})}
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(full)
        out, err = io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                code = main(list(args))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return CliResult(code, out.getvalue(), err.getvalue())

    def spawn(self, *args: str, env: dict[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the CLI as a separate process (needed for kill -9 crash tests), with SIGINT as a
        terminal gives it: a suite started in the background (CI) has it ignored, and drtool
        keeps an ignored SIGINT ignored."""
        return subprocess.run([sys.executable, "-m", "drtool", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, cwd=self.tmp,
                              preexec_fn=terminal_signals)

    def init(self) -> CliResult:
        result = self.run("init")
        assert result.code == 0, result.err
        return result

    def session(self) -> api.Session:
        return api.open_repository(str(self.repo), PASSWORD.encode(), catalog=str(self.catalog))


def make_env(tmp: Path) -> DrEnv:
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRTOOL_")}
    env.update(DRTOOL_REPOSITORY=str(tmp / "repo"), DRTOOL_PASSWORD=PASSWORD,
               DRTOOL_CATALOG=str(tmp / "catalog.sqlite"), PYTHONPATH=str(ROOT),
               XDG_STATE_HOME=str(tmp / "state"), XDG_CACHE_HOME=str(tmp / "cache"))
    return DrEnv(tmp, tmp / "repo", tmp / "catalog.sqlite", env)


def fixture_copy(fixture: Path, tmp: Path, old_catalog: bool) -> DrEnv:
    """A checked-in repository made by an earlier drtool (tests/fixtures/*), copied so a test may
    write to it, opened with its passphrase file; with ``old_catalog``, the catalog file it came
    with (so the catalog migrations run on it), else a fresh catalog rebuilt from the repository."""
    import shutil
    env = make_env(tmp)
    shutil.copytree(fixture / "repo", env.repo)
    (env.repo / "locks").mkdir(exist_ok=True)  # git keeps no empty directories
    if old_catalog:
        shutil.copy(fixture / "catalog.sqlite", env.catalog)
    env.env.pop("DRTOOL_PASSWORD")
    env.env["DRTOOL_PASSWORD_FILE"] = str(fixture / "passphrase")
    return env


@pytest.fixture
def dr(tmp_path: Path) -> DrEnv:
    return make_env(tmp_path / "dr")


@pytest.fixture
def repo_env(dr: DrEnv) -> DrEnv:
    dr.init()
    return dr


def init_repo(repo: str, catalog: str) -> str:
    return api.init(repo, PASSWORD.encode(), catalog=catalog)  # the default key derivation, as deployed


def terminal_signals() -> None:
    """In a child before exec: SIGINT back to its default, as a shell at a terminal starts a command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_without_override(env: DrEnv, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI so file permissions apply even as root (DAC override capabilities dropped)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run([*prefix, sys.executable, "-m", "drtool", *args], env=env.env,
                          capture_output=True, text=True, timeout=120, cwd=env.tmp)


@pytest.fixture
def tiny_fs(tmp_path: Path):
    """A 2 MiB tmpfs (real ENOSPC); yields its path; needs root (CI runs as root)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests need root to mount a tmpfs (scripts/test runs them in CI as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
