"""What `drtool backup` of a local repository loads: its peak RSS is issue 21's target.

Every library a backup imports stays resident for the whole run, so one it does
not need is paid for at the nightly bench's peak (docs/performance.md, "Fixed
cost of a backup").  Run as the console script runs: a fresh interpreter through
``drtool.cli.entry.run``.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import DrEnv

PROBE = r"""
import json, sys
from drtool.cli import entry

sys.argv = ["drtool", *sys.argv[1:]]
try:
    entry.run()
except SystemExit as exc:
    print(json.dumps({"code": exc.code, "modules": sorted(sys.modules)}))
"""

# Libraries drtool uses elsewhere (S3, Swift, migrations, databases, mount) or that
# its dependencies could pull in; none has any part in a backup to a local directory.
NOT_FOR_A_LOCAL_BACKUP = ("alembic", "boto3", "botocore", "s3transfer", "swiftclient", "sqlalchemy.orm",
                          "rich", "pydantic", "psycopg", "pymysql", "mfusepy", "moto", "requests",
                          "urllib3", "yaml", "jinja2")

# Mapped into the process while the data is read, they would sit under the data path's peak:
# SQLAlchemy (and the asyncio and ssl it imports) only once the data is stored
# (``Session.warm_catalog``), OpenSSL's libcrypto (``hashlib``) not at all (``drtool.digests``).
NOT_WHILE_READING = ("/sqlalchemy/", "/_ssl.", "/_asyncio.", "/_sqlite3.", "/libcrypto.so", "/_hashlib.")


def _backup_in_fresh_interpreter(dr: DrEnv, *args: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, "-c", PROBE, "backup", *args], env=dr.env, capture_output=True,
                          text=True, timeout=120, cwd=dr.tmp)
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_local_backup_imports_none_of_the_libraries_it_does_not_use(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "a.txt").write_text("a file\n" * 1000)
    for args in ([str(src), "--name", "files"], [str(src), "--name", "files"],  # night 1, night 2
                 ["--from-command", "echo dump", "--name", "db/one"]):
        seen = _backup_in_fresh_interpreter(repo_env, *args)
        assert seen["code"] == 0, seen["code"]
        modules = set(seen["modules"])  # type: ignore[arg-type]
        loaded = sorted(m for m in modules if m.split(".")[0] in NOT_FOR_A_LOCAL_BACKUP or m in NOT_FOR_A_LOCAL_BACKUP)
        assert loaded == [], (args, loaded)
        assert "sqlalchemy" in modules  # the catalog is written at the end: the probe sees a whole run


def test_nothing_heavy_is_mapped_while_a_backup_reads_its_data(repo_env: DrEnv, tmp_path: Path) -> None:
    """The dump command reads its parent's (the running backup's) memory map: what the
    process holds while data flows through it, seen from outside and stored as the data."""
    maps = "grep -o '/[^ ]*\\.so[^ ]*' /proc/$PPID/maps | sort -u"
    seen = _backup_in_fresh_interpreter(repo_env, "--from-command", maps, "--name", "db/maps",
                                        "--filename", "maps.txt")
    assert seen["code"] == 0, seen
    dumped = repo_env.spawn("dump", "latest", "--name", "db/maps")
    assert dumped.returncode == 0, dumped.stderr
    mapped = dumped.stdout.split()
    assert any("/cryptography/" in path for path in mapped), mapped  # it is the backup's own map
    heavy = [path for path in mapped if any(part in path for part in NOT_WHILE_READING)]
    assert heavy == [], heavy
