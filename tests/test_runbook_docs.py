"""The human runbooks work: every ```sh block of runbooks/*.md runs against a sandbox.

A runbook whose commands have drifted from the tool fails here, not at 3 a.m.
Conventions (docs/rehearsals.md, "Human runbooks"):

* blocks of one file run in order, each as ``bash -euo pipefail``; exported
  variables and the working directory carry over to the next block;
* the environment has DRTOOL_REPOSITORY / DRTOOL_PASSWORD / DRTOOL_CATALOG for a
  copy of a repository holding snapshots of a files source ``media``, a MariaDB
  dump stream ``db/wiki`` and one recorded rehearsal; ``SANDBOX`` (absent, to be
  created); the working directory holds a copy of ``runbooks/``;
* ``<!-- requires: a, b -->`` before a block asks for mariadb, postgresql, s3 or
  drtool-copy; the test provides each or FAILS naming what it could not provide;
* ``postgresql``: a server archiving WAL into the repository as source
  ``services``, and no PGHOST/PGPORT/PGUSER: a runbook says itself where to
  connect.  Where the runbook runs commands as the OS user postgres
  (``runuser -u postgres``), it is provided as deployed: drtool installed by
  ``scripts/install`` first on PATH, the server running as ``postgres`` (its
  archive_command too), the repository shared with group ``postgres`` by the
  chgrp/chmod lines of docs/operations.md;
* ``<!-- not-run: reason -->`` skips a block: only for destructive or
  interactive commands, at most two per file.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

import dbservers
import s3server
from conftest import PASSWORD, ROOT, DrEnv, make_env
from deployed import doc_command, install_drtool

DOCS = sorted((ROOT / "runbooks").glob("*.md"))
REQUIREMENTS = ("mariadb", "postgresql", "s3", "drtool-copy")
MAX_NOT_RUN = 2
BLOCK_TIMEOUT = 600
DIRECTIVE = re.compile(r"<!--\s*(requires|not-run)\s*:\s*(.*?)\s*-->")
WIKI_DUMP = """\
-- a small MediaWiki-like dump: loads into MariaDB and PostgreSQL alike
CREATE TABLE page (page_id INT PRIMARY KEY, page_title VARCHAR(255) NOT NULL);
INSERT INTO page VALUES (1, 'Main_Page'), (2, 'Sandbox');
"""


@dataclass
class Block:
    line: int
    code: str
    requires: set[str] = field(default_factory=set)
    not_run: str | None = None


def extract_blocks(text: str) -> tuple[list[Block], list[str]]:
    """The ```sh blocks with their directives; also directives attached to nothing."""
    lines = text.splitlines()
    blocks: list[Block] = []
    orphans: list[str] = []
    pending: dict[str, tuple[int, str]] = {}
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        match = DIRECTIVE.fullmatch(stripped)
        if match:
            pending[match.group(1)] = (i + 1, match.group(2))
        elif stripped.startswith("```"):
            lang, start = stripped[3:].strip(), i
            i += 1
            body = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            if lang == "sh":
                requires = {r.strip() for r in pending.get("requires", (0, ""))[1].split(",") if r.strip()}
                blocks.append(Block(start + 1, "\n".join(body) + "\n", requires,
                                    pending["not-run"][1] if "not-run" in pending else None))
            else:
                orphans += [f"line {n}: {kind} not before a ```sh block" for kind, (n, _) in pending.items()]
            pending = {}
        elif stripped:
            orphans += [f"line {n}: {kind} not directly before a ```sh block" for kind, (n, _) in pending.items()]
            pending = {}
        i += 1
    return blocks, orphans


def test_block_extraction_understands_directives() -> None:
    text = ("intro\n<!-- requires: s3, mariadb -->\n\n```sh\necho a\n```\n```text\nout\n```\n"
            "<!-- not-run: destructive: rm -->\n```sh\nrm -rf /x\n```\n<!-- requires: s3 -->\nprose\n")
    blocks, orphans = extract_blocks(text)
    assert [(b.line, b.requires, b.not_run) for b in blocks] == [
        (4, {"s3", "mariadb"}, None), (11, set(), "destructive: rm")]
    assert blocks[0].code == "echo a\n"
    assert orphans == ["line 14: requires not directly before a ```sh block"]


def test_every_runbook_is_covered() -> None:
    names = {p.name for p in DOCS}
    assert names >= {"quarterly-dr-drill.md", "pitr-database.md", "media-restore.md", "catalog-lost.md",
                     "site-lost.md"}


# Inputs a runbook may take from the operator's environment without defining them (the
# conventions of docs/rehearsals.md, "Human runbooks"); anything else it must set itself, or
# demand with ${NAME:?...} before use, so it runs as written on a fresh host.
CONVENTION_INPUTS = {"DRTOOL_REPOSITORY", "DRTOOL_PASSWORD", "DRTOOL_PASSWORD_FILE", "DRTOOL_CATALOG",
                     "DRTOOL_CONFIG", "PATH", "HOME"}
USED = re.compile(r"\$\{?([A-Z_][A-Z0-9_]*)")
DEFINED = re.compile(r"(?:^|[\s;(])(?:export\s+)?([A-Z_][A-Z0-9_]*)=|\$\{([A-Z_][A-Z0-9_]*):[?=]|read\s+-\w+\s+'[^']*'\s+([A-Z_]+)")


def undefined_variables(blocks: list[Block]) -> list[str]:
    """``$NAME`` used in a block before any block of the runbook defines or demands it."""
    known = set(CONVENTION_INPUTS)
    problems = []
    for block in blocks:
        for number, line in enumerate(block.code.splitlines(), block.line + 1):
            known |= {name for groups in DEFINED.findall(line) for name in groups if name}
            for name in USED.findall(line):
                if name not in known and not name.startswith("AWS_"):
                    problems.append(f"line {number}: ${name} is used but never defined or demanded")
                    known.add(name)
    return problems


def test_undefined_variable_detection() -> None:
    blocks, _ = extract_blocks("```sh\nmkdir -p \"$SANDBOX\"\n```\n```sh\nexport X=1\n"
                               ": \"${WHEN:?give WHEN}\"\necho $X $WHEN $DRTOOL_CATALOG\n```\n")
    assert undefined_variables(blocks) == ["line 2: $SANDBOX is used but never defined or demanded"]


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_runbook_defines_every_variable_it_uses(doc: Path) -> None:
    blocks, _ = extract_blocks(doc.read_text())
    assert undefined_variables(blocks) == [], f"{doc.name}: runs as written only with these defined"


# ----- the sandbox repository ---------------------------------------------------------------
@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> DrEnv:
    """Built once: media + db/wiki snapshots and one recorded rehearsal."""
    dr = make_env(tmp_path_factory.mktemp("runbook-template"))
    dr.init()
    media = dr.tmp / "media"
    (media / "img" / "2026").mkdir(parents=True)
    (media / "README").write_text("Wiki media store\n")
    for i in range(8):
        (media / "img" / "2026" / f"photo{i}.jpg").write_bytes(os.urandom(2000 + i * 700))
    assert dr.run("backup", str(media), "--name", "media").code == 0
    dump = dr.tmp / "wiki.sql"
    dump.write_text(WIKI_DUMP)
    result = dr.run("backup", "--from-command", f"cat {dump}", "--name", "db/wiki", "--filename", "wiki.sql")
    assert result.code == 0, result.err
    (dr.tmp / "tmp").mkdir()
    result = dr.run("rehearse", str(ROOT / "runbooks" / "media-files.toml"),
                    env={"TMPDIR": str(dr.tmp / "tmp")})
    assert result.code == 0, result.out + result.err
    return dr


@dataclass
class Workspace:
    env: dict[str, str]
    cwd: Path
    state: Path
    tmpdir: Path
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    dr: DrEnv | None = None


def workspace(template: DrEnv, tmp: Path) -> Workspace:
    """A private copy of the template repository and catalog, a shell environment for it.

    ``tmp`` must be reachable by the ``postgres`` user when the runbook needs PostgreSQL."""
    home, work, state, tmpdir, bin_dir = (tmp / n for n in ("home", "work", "state", "tmp", "bin"))
    for folder in (home, work, state, tmpdir, bin_dir):
        folder.mkdir(parents=True)
    shutil.copytree(template.repo, tmp / "repo")
    for suffix in ("", "-wal", "-shm"):
        if Path(str(template.catalog) + suffix).exists():
            shutil.copy(str(template.catalog) + suffix, str(tmp / "catalog.sqlite") + suffix)
    shutil.copytree(ROOT / "runbooks", work / "runbooks")
    shim = bin_dir / "drtool"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m drtool "$@"\n')
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DRTOOL_", "AWS_", "PG", "MYSQL"))}
    env.update(DRTOOL_REPOSITORY=str(tmp / "repo"), DRTOOL_PASSWORD=PASSWORD,
               DRTOOL_CATALOG=str(tmp / "catalog.sqlite"), SANDBOX=str(tmp / "sandbox"), HOME=str(home),
               TMPDIR=str(tmpdir), XDG_STATE_HOME=str(tmp / "xdg"), PYTHONPATH=str(ROOT),
               PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}")
    (state / "cwd").write_text(str(work))
    (state / "env.sh").write_text("")
    dr = make_env(tmp / "dr")
    dr.env.update({k: v for k, v in env.items() if k.startswith("DRTOOL_") or k == "XDG_STATE_HOME"})
    return Workspace(env, work, state, tmpdir, dr=dr)


def run_block(ws: Workspace, block: Block) -> subprocess.CompletedProcess[str]:
    """One block as its own bash script, in the session state the previous blocks left."""
    state = ws.state
    script = (f"set -euo pipefail\nsource '{state}/env.sh'\ncd \"$(cat '{state}/cwd')\"\n"
              f"{block.code}"
              f"export -p > '{state}/env.new' && mv '{state}/env.new' '{state}/env.sh'\n"
              f"pwd > '{state}/cwd'\n")
    path = state / f"block-{block.line}.sh"
    path.write_text(script)
    return subprocess.run(["bash", str(path)], env=ws.env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT, stdin=subprocess.DEVNULL)


# ----- requirements ---------------------------------------------------------------------------
def provide_s3(ws: Workspace, stack: ExitStack) -> None:
    try:
        server = s3server.start_moto()
    except Exception as exc:  # noqa: BLE001 - turned into a clear failure
        pytest.fail(f"requirement 's3': the moto S3 server could not start ({exc}); "
                    f"install moto[server] (scripts/test does)")
    stack.callback(server.stop)
    bucket = s3server.create_bucket(server.url)
    ws.env.update(s3server.DUMMY_ENV)
    ws.env.update(AWS_ENDPOINT_URL=server.url, AWS_CONFIG_FILE=os.devnull,
                  AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
                  DRTOOL_SECOND_SITE=f"s3://{bucket}/drtool")


def provide_drtool_copy(ws: Workspace, stack: ExitStack) -> None:
    probe = subprocess.run(["drtool", "copy", "--help"], env=ws.env, capture_output=True, text=True,
                           timeout=120)
    if probe.returncode != 0:
        pytest.fail("requirement 'drtool-copy': 'drtool copy' is not available in this build "
                    f"(exit {probe.returncode}: {probe.stderr.strip()[-200:]}); it is built in "
                    f"drtool/cli/commands/copy.py")


def provide_mariadb(ws: Workspace, stack: ExitStack) -> Callable[[str], None]:
    """A live MariaDB with binlogs, source 'wikidb' backed up; returns the row writer."""
    server = stack.enter_context(dbservers.mariadb_server())
    server.sql("CREATE DATABASE wiki")
    server.sql("CREATE TABLE wiki.page (page_id INT AUTO_INCREMENT PRIMARY KEY, page_title VARCHAR(255))")
    server.sql("INSERT INTO wiki.page (page_title) VALUES ('Main_Page')")
    cnf = ws.state / "mysql-home"
    cnf.mkdir()
    password = server.password.replace("\\", "\\\\").replace('"', '\\"')
    (cnf / "my.cnf").write_text(f'[client]\nsocket={server.socket}\nuser=root\npassword="{password}"\n')
    ws.env.update(MYSQL_HOME=str(cnf), MYSQL_UNIX_PORT=server.socket)
    ws.sources["wikidb"] = server.source(dbname="wiki")
    return lambda title: server.sql(f"INSERT INTO wiki.page (page_title) VALUES ('{title}')")


def os_user_home(name: str) -> str:
    import pwd
    return pwd.getpwnam(name).pw_dir


def share_repository_with(ws: Workspace, group: str) -> None:
    """The chgrp/chmod lines docs/operations.md prints for sharing an existing repository."""
    repo = ws.env["DRTOOL_REPOSITORY"]
    for pattern in (r"^chgrp -R drtool ", r"^find \S+ -type d -exec chmod 2770", r"^find \S+ -type f -exec chmod 0640"):
        line = doc_command("operations.md", pattern).replace("/srv/backup/repo", repo)
        line = line.replace("chgrp -R drtool", f"chgrp -R {group}")
        proc = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"{line}: {proc.stderr}"


def provide_postgresql(ws: Workspace, stack: ExitStack, as_postgres: bool) -> Callable[[str], None]:
    """A live PostgreSQL archiving WAL into the repository (source 'services'); ``as_postgres``:
    run by the OS user postgres with the installed drtool, which comes first on PATH for the
    runbook too."""
    if not as_postgres:
        return _provide_postgresql_in_namespace(ws, stack)
    bin_dir = stack.enter_context(contextmanager(install_drtool)())
    catalogs = Path(os_user_home("postgres"), ".local", "state", "drtool")
    before = set(catalogs.iterdir()) if catalogs.is_dir() else set()
    stack.callback(lambda: [shutil.rmtree(p, ignore_errors=True) for p in
                            (set(catalogs.iterdir()) if catalogs.is_dir() else set()) - before])
    share_repository_with(ws, "postgres")
    password_file = ws.state / "drtool-password"
    password_file.write_text(PASSWORD + "\n")
    shutil.chown(password_file, group="postgres")
    password_file.chmod(0o640)
    pg_state = ws.state / "postgres-state"
    pg_state.mkdir()
    shutil.chown(pg_state, "postgres")
    archive_env = {k: v for k, v in dbservers.drtool_env(ws.env, str(password_file)).items()
                   if k != "DRTOOL_CATALOG"}
    archive_env["XDG_STATE_HOME"] = str(pg_state)
    server = stack.enter_context(dbservers.postgres_server(archive_env=archive_env, source="services",
                                                           os_user="postgres", drtool=str(bin_dir / "drtool")))
    stack.callback(dbservers.stop_postgres, server.bindir, str(Path(ws.env["SANDBOX"]) / "pg-restore"), "postgres")
    server.sql("CREATE DATABASE services")
    server.sql("CREATE TABLE orders (id serial PRIMARY KEY, item text)", "services")
    ws.sources["services"] = server.source(method="basebackup")
    ws.env.update(DRTOOL_PASSWORD_FILE=str(password_file), PATH=f"{bin_dir}{os.pathsep}{ws.env['PATH']}")

    def write(item: str) -> None:
        server.sql(f"INSERT INTO orders (item) VALUES ('{item}')", "services")
        server.switch_wal_and_wait()
    return write


def _provide_postgresql_in_namespace(ws: Workspace, stack: ExitStack) -> Callable[[str], None]:
    """The server as an unprivileged uid in a user namespace (root outside), for runbooks whose
    commands all run as the operator (drills: their sandboxes do the same)."""
    password_file = ws.state / "drtool-password"
    password_file.write_text(PASSWORD + "\n")
    archive_env = dbservers.drtool_env(ws.env, str(password_file))
    server = stack.enter_context(dbservers.postgres_server(archive_env=archive_env, source="services"))
    server.sql("CREATE DATABASE services")
    server.sql("CREATE TABLE orders (id serial PRIMARY KEY, item text)", "services")
    ws.sources["services"] = server.source(method="basebackup")
    ws.env.update(DRTOOL_PASSWORD_FILE=str(password_file))

    def write(item: str) -> None:
        server.sql(f"INSERT INTO orders (item) VALUES ('{item}')", "services")
        server.switch_wal_and_wait()
    return write


def provide(ws: Workspace, needed: set[str], stack: ExitStack, as_postgres: bool = False) -> None:
    unknown = needed - set(REQUIREMENTS)
    assert not unknown, f"unknown requirement(s) {sorted(unknown)}; known: {', '.join(REQUIREMENTS)}"
    writers = []
    if "s3" in needed:
        provide_s3(ws, stack)
    if "drtool-copy" in needed:
        provide_drtool_copy(ws, stack)
    if "mariadb" in needed:
        writers.append(provide_mariadb(ws, stack))
    if "postgresql" in needed:
        writers.append(provide_postgresql(ws, stack, as_postgres))
    if ws.sources:
        _configure_sources(ws)
    if writers:
        _incident(ws, writers)


def _configure_sources(ws: Workspace) -> None:
    config = dbservers.write_config(ws.state / "drtool.toml", ws.env["DRTOOL_REPOSITORY"], ws.sources)
    ws.env["DRTOOL_CONFIG"] = str(config)
    assert ws.dr is not None
    ws.dr.env.update(DRTOOL_CONFIG=str(config))
    for name in ws.sources:
        result = ws.dr.run("backup", "--source", name)
        assert result.code == 0, f"backup of source {name} failed: {result.err}"


def _incident(ws: Workspace, writers: list[Callable[[str], None]]) -> None:
    """Good rows, then WHEN (the last good moment), then the 'bad change'."""
    for write in writers:
        write("Good_Edit")
    time.sleep(1.1)
    ws.env["WHEN"] = datetime.now(timezone.utc).isoformat()
    time.sleep(1.1)
    for write in writers:
        write("Vandalism")


# ----- the test ---------------------------------------------------------------------------------
@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_runbook_sh_blocks_run(doc: Path, template: DrEnv, tmp_path: Path) -> None:
    blocks, orphans = extract_blocks(doc.read_text())
    assert not orphans, f"{doc.name}: directives not attached to a ```sh block: {orphans}"
    runnable = [b for b in blocks if not b.not_run]
    skipped = [b for b in blocks if b.not_run]
    assert len(runnable) >= 3, f"{doc.name}: a runbook needs runnable ```sh blocks"
    assert len(skipped) <= MAX_NOT_RUN, f"{doc.name}: too many not-run blocks ({len(skipped)})"
    for block in skipped:
        assert re.match(r"(destructive|interactive)\b", block.not_run or ""), \
            f"{doc.name}:{block.line}: not-run is only for destructive or interactive commands"
    needed = set().union(*(b.requires for b in runnable))
    as_postgres = "postgresql" in needed and "runuser -u postgres" in doc.read_text()
    with ExitStack() as stack:
        if as_postgres:  # pytest's tmp_path is private to root
            tmp_path = Path(dbservers.short_tmpdir("drrb-"))
            tmp_path.chmod(0o755)
            stack.callback(shutil.rmtree, tmp_path, True)
        ws = workspace(template, tmp_path)
        provide(ws, needed, stack, as_postgres)
        for block in runnable:
            proc = run_block(ws, block)
            assert proc.returncode == 0, (
                f"{doc.name}:{block.line}: block exited {proc.returncode}\n--- block ---\n{block.code}"
                f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
        sandbox = Path(ws.env["SANDBOX"])
        leftovers = sorted(p.name for folder in (ws.tmpdir, sandbox) if folder.is_dir()
                           for p in folder.iterdir() if p.name.startswith("drtool-rehearsal-"))
        assert not leftovers, f"{doc.name}: rehearsal sandboxes left behind: {leftovers}"
