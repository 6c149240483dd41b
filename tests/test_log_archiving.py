"""Log archiving commands as PostgreSQL runs them: bounded, exact exit codes, asynchronous mode.

Each command runs as its own process with the default key parameters, as
archive_command / restore_command do.  The repository is made by plain
``drtool init``; WAL files are laid out as PostgreSQL lays them out
(``pg_wal/<name>`` plus ``pg_wal/archive_status/<name>.ready``).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import PASSWORD, DrEnv, make_env
from drtool.databases import archive_async

SEGMENT = 1024 * 1024  # initdb --wal-segsize=1 is a valid PostgreSQL segment size


def _env(tmp: Path, **source: object) -> DrEnv:
    dr = make_env(tmp)
    dr.env.pop("DRTOOL_PASSWORD")
    (tmp / "passphrase").write_text(PASSWORD + "\n")
    dr.env["DRTOOL_PASSWORD_FILE"] = str(tmp / "passphrase")
    lines = [f'repository = "{dr.repo}"', "", "[sources.db1]", 'type = "postgresql"', 'method = "basebackup"']
    lines += [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {str(v).lower()}"
              for k, v in source.items()]
    (tmp / "drtool.toml").write_text("\n".join(lines) + "\n")
    dr.env["DRTOOL_CONFIG"] = str(tmp / "drtool.toml")
    init = dr.spawn("init")  # default Argon2id parameters
    assert init.returncode == 0, init.stderr
    return dr


def _wal_dir(tmp: Path, count: int, first: int = 1) -> tuple[Path, list[str]]:
    wal = tmp / "pg_wal"
    (wal / "archive_status").mkdir(parents=True, exist_ok=True)
    names = []
    for seq in range(first, first + count):
        name = f"00000001000000000000{seq:04X}"
        (wal / name).write_bytes(os.urandom(SEGMENT // 4) * 4)
        (wal / "archive_status" / f"{name}.ready").touch()
        names.append(name)
    return wal, names


def _done(wal: Path, name: str) -> None:
    """What PostgreSQL does once archive_command exited 0."""
    os.rename(wal / "archive_status" / f"{name}.ready", wal / "archive_status" / f"{name}.done")


@pytest.fixture
def async_env(tmp_path: Path) -> DrEnv:
    return _env(tmp_path / "dr", archive_async=True, spool_dir=str(tmp_path / "spool"))


def _stop_worker(spool: Path) -> None:
    """Tests do not wait for the worker's idle exit: kill whoever holds the lock."""
    out = subprocess.run(["fuser", "-k", str(spool / "worker.lock")], capture_output=True, check=False)
    del out


def test_async_push_stores_every_file_and_the_command_needs_no_key(async_env: DrEnv, tmp_path: Path) -> None:
    wal, names = _wal_dir(tmp_path, 6)
    spool = tmp_path / "spool"
    try:
        first = async_env.spawn("pg", "wal-push", "--source", "db1", str(wal / names[0]))
        assert first.returncode == 0, first.stderr
        _done(wal, names[0])
        # The worker (started by the first call, with the passphrase) holds the key: later
        # archive_command runs need none, so they are refused no key and derive none.
        no_secret = {"DRTOOL_PASSWORD_FILE": "/nonexistent/passphrase"}
        for name in names[1:]:
            result = async_env.spawn("pg", "wal-push", "--source", "db1", str(wal / name), env=no_secret)
            assert result.returncode == 0, result.stderr
            _done(wal, name)
        assert list((spool / "ok").iterdir()) == []  # every verdict was taken by its archive_command
    finally:
        _stop_worker(spool)
    for name in names:
        fetched = tmp_path / f"fetched-{name}"
        got = async_env.spawn("pg", "wal-fetch", "--source", "db1", name, str(fetched))
        assert got.returncode == 0, got.stderr
        assert fetched.read_bytes() == (wal / name).read_bytes()


def test_async_push_reports_a_worker_that_cannot_start(async_env: DrEnv, tmp_path: Path) -> None:
    wal, names = _wal_dir(tmp_path, 1)
    (tmp_path / "wrong").write_text("not the passphrase\n")
    started = time.monotonic()
    result = async_env.spawn("pg", "wal-push", "--source", "db1", str(wal / names[0]),
                             env={"DRTOOL_PASSWORD_FILE": str(tmp_path / "wrong")})
    assert result.returncode == 1
    assert "the archive worker could not start: wrong passphrase" in result.stderr
    assert time.monotonic() - started < 60  # told at once, not after the timeout
    assert result.stderr.count("\n") == 1


def test_async_push_times_out_when_the_file_is_never_stored(async_env: DrEnv, tmp_path: Path) -> None:
    wal, names = _wal_dir(tmp_path, 1)
    os.unlink(wal / "archive_status" / f"{names[0]}.ready")  # the worker only stores ready files
    try:
        result = async_env.spawn("pg", "wal-push", "--source", "db1", "--timeout", "3s", str(wal / names[0]))
    finally:
        _stop_worker(tmp_path / "spool")
    assert result.returncode == 1 and "not archived within 3s" in result.stderr


def test_async_push_passes_a_storage_error_on(async_env: DrEnv, tmp_path: Path) -> None:
    wal, names = _wal_dir(tmp_path, 1)
    stored = async_env.spawn("pg", "wal-push", "--source", "db1", "--async", str(wal / names[0]))
    assert stored.returncode == 0, stored.stderr
    (wal / names[0]).write_bytes(os.urandom(SEGMENT))  # a second cluster writing into the same source
    try:
        conflict = async_env.spawn("pg", "wal-push", "--source", "db1", str(wal / names[0]))
    finally:
        _stop_worker(tmp_path / "spool")
    assert conflict.returncode == 1 and "different content" in conflict.stderr


def test_stale_verdicts_are_swept(tmp_path: Path) -> None:
    spool = archive_async.Spool.open(str(tmp_path / "spool"), "db1")
    wal, names = _wal_dir(tmp_path, 2)
    spool.write_marker("ok", names[0])
    spool.write_marker("ok", names[1])
    _done(wal, names[0])
    now = time.time() + archive_async.STALE_MARKER + 1
    assert archive_async.sweep_stale(spool, str(wal), now=now) == 1
    assert sorted(p.name for p in (tmp_path / "spool" / "ok").iterdir()) == [names[1]]  # still .ready: kept


# ----- bounded and exact, synchronous ----------------------------------------------------------------
def _blocking_repository(dr: DrEnv) -> None:
    """A repository whose config is a FIFO: opening it blocks forever, like a hung mount."""
    (dr.repo / "config").unlink()
    os.mkfifo(dr.repo / "config")


def test_wal_push_and_fetch_give_up_after_their_timeout(tmp_path: Path) -> None:
    dr = _env(tmp_path / "dr")
    wal, names = _wal_dir(tmp_path, 1)
    _blocking_repository(dr)
    push = dr.spawn("pg", "wal-push", "--source", "db1", "--timeout", "2s", str(wal / names[0]), timeout=60)
    assert push.returncode == 1 and "did not finish within 2s" in push.stderr
    fetch = dr.spawn("pg", "wal-fetch", "--source", "db1", "--timeout", "2s", names[0], str(tmp_path / "x"),
                     timeout=60)
    assert fetch.returncode == 126 and "did not finish within 2s" in fetch.stderr


@pytest.mark.parametrize("case", ["wrong-passphrase", "no-repository", "damaged-object", "usage-error",
                                  "internal-error"])
def test_wal_fetch_exits_126_unless_the_file_is_definitely_absent(tmp_path: Path, case: str) -> None:
    """PostgreSQL reads 1..125 as "not archived" and ends recovery: only true absence may say so."""
    dr = _env(tmp_path / "dr")
    wal, names = _wal_dir(tmp_path, 1)
    assert dr.spawn("pg", "wal-push", "--source", "db1", str(wal / names[0])).returncode == 0
    args = ["pg", "wal-fetch", "--source", "db1", names[0], str(tmp_path / "dest")]
    env: dict[str, str] = {}
    if case == "wrong-passphrase":
        (tmp_path / "wrong").write_text("wrong\n")
        env["DRTOOL_PASSWORD_FILE"] = str(tmp_path / "wrong")
    elif case == "no-repository":
        env["DRTOOL_REPOSITORY"] = str(tmp_path / "nowhere")
    elif case == "damaged-object":
        for path in (dr.repo / "wal").rglob("*"):
            if path.is_file() and not path.name.endswith(".info"):
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF
                path.write_bytes(bytes(data))
    elif case == "usage-error":
        args = ["pg", "wal-fetch", "--source", "db1", names[0]]  # %p missing from restore_command
    elif case == "internal-error":
        (dr.repo / "wal").rename(tmp_path / "moved")
        (dr.repo / "wal").write_text("a file where a directory belongs\n")
    result = dr.spawn(*args, env=env)
    assert result.returncode == 126, (case, result.returncode, result.stderr)
    absent = dr.spawn("pg", "wal-fetch", "--source", "db1", "00000001000000000000FFFF", str(tmp_path / "d2"))
    if case in ("no-repository", "wrong-passphrase", "damaged-object", "internal-error"):
        return
    assert absent.returncode == 1 and "not in the archive" in absent.stderr


def test_generated_restore_command_maps_a_broken_install_to_126(tmp_path: Path) -> None:
    """drtool-wal-fetch.sh: a python that cannot even import drtool exits 1 — read as fatal, not absent."""
    from drtool.sources.postgres import write_fetch_script
    script = write_fetch_script(str(tmp_path), "db1", {"PYTHONPATH": str(tmp_path / "empty")}, "/usr/bin/python3")
    result = subprocess.run([script, "000000010000000000000001", str(tmp_path / "x")], capture_output=True,
                            text=True, check=False, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 126, result.stderr


# ----- many runs, and runs at the same time ------------------------------------------------------
@pytest.mark.slow
def test_push_fetch_path_fifty_times_without_a_failure(tmp_path: Path) -> None:
    """Each run a fresh process with the default key parameters, two at a time (the old bug:
    two concurrent Argon2id derivations inside one process hung or failed 30-70 % of runs)."""
    dr = _env(tmp_path / "dr")
    wal, names = _wal_dir(tmp_path, 50)

    def round_trip(name: str) -> tuple[str, int, int, bool]:
        push = dr.spawn("pg", "wal-push", "--source", "db1", str(wal / name), timeout=120)
        dest = tmp_path / f"back-{name}"
        fetch = dr.spawn("pg", "wal-fetch", "--source", "db1", name, str(dest), timeout=120)
        same = dest.exists() and dest.read_bytes() == (wal / name).read_bytes()
        return name, push.returncode, fetch.returncode, same

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(round_trip, names))
    failed = [r for r in results if r[1:] != (0, 0, True)]
    assert not failed, f"{len(failed)} of 50 push/fetch round trips failed: {failed[:5]}"


def test_archive_command_while_a_nightly_backup_runs(tmp_path: Path) -> None:
    """PostgreSQL calls archive_command while the nightly backup holds the repository: both succeed."""
    dr = _env(tmp_path / "dr")
    data = tmp_path / "media"
    data.mkdir()
    for i in range(40):
        (data / f"f{i}.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    wal, names = _wal_dir(tmp_path, 8)
    backup = subprocess.Popen([sys.executable, "-m", "drtool", "backup", str(data), "--name", "media"],
                              env=dr.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pushes = [dr.spawn("pg", "wal-push", "--source", "db1", str(wal / n), timeout=120) for n in names]
    out, err = backup.communicate(timeout=300)
    assert backup.returncode == 0, err
    assert [p.returncode for p in pushes] == [0] * len(names), [p.stderr for p in pushes if p.returncode]


def test_key_derivation_out_of_memory_is_one_clear_line(tmp_path: Path) -> None:
    """Argon2id needs 64 MiB: under a tight address-space limit the failure is a message with
    its exit code (126 for restore_command), not "internal error: MemoryError"."""
    dr = _env(tmp_path / "dr")
    seen_failure = False
    for limit_mib in (100, 110, 120):
        for args, code in ((["snapshots"], 1),
                           (["pg", "wal-fetch", "--source", "db1", "000000010000000000000001",
                             str(tmp_path / "x")], 126)):
            proc = subprocess.run(["prlimit", f"--as={limit_mib * 2**20}", sys.executable, "-m", "drtool", *args],
                                  env=dr.env, capture_output=True, text=True, timeout=120, check=False)
            if "cannot derive the key" in proc.stderr:
                seen_failure = True
                assert proc.returncode == code, proc.stderr
                assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
            else:  # too little memory to even load the libraries, or enough to succeed
                assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 1, proc.stderr
    assert seen_failure, "no limit made the key derivation fail: the test no longer tests anything"
