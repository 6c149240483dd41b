"""drtool as deployed: installed by scripts/install, run as the OS user the docs name.

The test virtualenv's interpreter lives under /root (mode 0700), which the
``postgres`` or ``mysql`` user cannot reach, exactly like a developer's
checkout on a real host.  These helpers install drtool the documented way
(``scripts/install``, a venv from the system interpreter in a shared prefix)
and run it with ``runuser`` (present on minimal Debian, unlike sudo).
Default key-derivation parameters throughout: nothing here is tuned for speed.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


INSTALL_INPUTS = ("drtool", "setup.cfg", "pyproject.toml", "scripts/install", "scripts/drtool-nightly")


def _tree_key() -> str:
    """A digest of everything ``scripts/install`` puts into the prefix."""
    digest = hashlib.sha256()
    for name in INSTALL_INPUTS:
        path = ROOT / name
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def install_drtool() -> Iterator[Path]:
    """``scripts/install --prefix P --no-link`` into a world-readable prefix; yields P/bin.

    One install per source tree, shared by every test module and xdist worker
    (a pip install takes ~45 s here): ``/tmp/drtool-install-<digest of the
    sources>``, made under an exclusive lock by whoever comes first; an edited
    tree gets a fresh one.  Installs of other trees untouched for a day go.
    """
    if os.geteuid() != 0:
        pytest.fail("the deployed-profile tests run commands as other OS users: run them as root "
                    "(scripts/test does in CI)")
    top = Path(f"/tmp/drtool-install-{_tree_key()}")
    with open(f"{top}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (top / "complete").exists():
            shutil.rmtree(top, ignore_errors=True)
            top.mkdir(mode=0o755)
            os.chmod(top, 0o755)
            proc = subprocess.run([str(ROOT / "scripts" / "install"), "--prefix", str(top / "venv"), "--no-link"],
                                  capture_output=True, text=True, timeout=900, check=False)
            assert proc.returncode == 0, f"scripts/install failed: {proc.stdout}\n{proc.stderr}"
            (top / "complete").write_text("")
        fcntl.flock(lock, fcntl.LOCK_UN)
    _remove_stale_installs(keep=top)
    yield top / "venv" / "bin"


def _remove_stale_installs(keep: Path) -> None:
    for old in Path("/tmp").glob("drtool-install-*"):
        if old == keep or old.suffix == ".lock" or not old.is_dir():
            continue
        try:
            if time.time() - old.stat().st_mtime < 86400:
                continue
            with open(f"{old}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            continue  # another run holds it


def os_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.fail(f"OS user {name!r} is missing: install the Debian package that creates it "
                    f"(scripts/test installs postgresql and mariadb-server)")


def shared_dir(prefix: str, owner: str) -> Path:
    """A short directory under /tmp owned by ``owner`` (socket paths must stay short)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    user = os_user(owner)
    os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(path, 0o755)
    return path


def runuser() -> str:
    path = shutil.which("runuser") or "/usr/sbin/runuser"
    if not os.access(path, os.X_OK):
        pytest.fail("runuser (util-linux) is missing")
    return path


def run_as(user: str, args: list[str], env: dict[str, str], timeout: float = 600, cwd: str | None = None,
           check: bool = False) -> subprocess.CompletedProcess[str]:
    """``runuser -u USER -- ARGS`` with ``env`` (runuser keeps it but HOME/USER/SHELL/LOGNAME)."""
    proc = subprocess.run([runuser(), "-u", user, "--", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or "/", check=False)
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} as {user} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def popen_as(user: str, args: list[str], env: dict[str, str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([runuser(), "-u", user, "--", *args], env=env, text=True, **kwargs)  # type: ignore[call-overload]


def doc_setting(doc: str, key: str) -> str:
    """The value of ``key = '...'`` as a doc prints it (e.g. archive_command in databases.md)."""
    text = (DOCS / doc).read_text()
    match = re.search(rf"^\s*{re.escape(key)} = '(.*)'\s*$", text, re.MULTILINE)
    assert match, f"docs/{doc} no longer shows {key} = '...'"
    return match.group(1)


def doc_command(doc: str, pattern: str) -> str:
    """The first command line in ``doc`` matching ``pattern`` (a regex), prompt stripped."""
    text = (DOCS / doc).read_text()
    for line in text.splitlines():
        line = line.strip().removeprefix("$ ")
        if re.search(pattern, line):
            return line
    raise AssertionError(f"docs/{doc} has no command matching {pattern!r}")
