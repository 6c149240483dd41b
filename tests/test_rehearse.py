"""Rehearsals: restore into a sandbox, validate, measure RTO/RPO, record, tear down.

Clocks are injected (no sleeping, no patching of drtool code): the fake clock advances when
the rehearsal logs that the restore finished, so RTO and RPO are exact.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import dbservers
from conftest import PASSWORD, ROOT, DrEnv
from drtool.catalog.rehearsals import last_rehearsal, rehearsal_history, remove_rehearsals
from drtool.errors import UsageError
from drtool.rehearse.drill import RehearseOptions, rebuild_rehearsals, rehearse
from drtool.rehearse.runbook import Check, SandboxSpec, load_runbook, parse_runbook
from drtool.rehearse.sandbox import CheckRunner, Sandbox
from drtool.repository.packfile import pack_name
from drtool.snapshot.store import walk_tree


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def populate(env: DrEnv) -> Path:
    media = env.tmp / "media"
    (media / "img" / "a").mkdir(parents=True)
    rng = random.Random(7)
    for i in range(12):
        (media / "img" / "a" / f"{i}.jpg").write_bytes(rng.randbytes(1000 * (i + 1)))
    (media / "README").write_text("media store\n")
    assert env.run("backup", str(media), "--name", "media").code == 0
    dump = "CREATE TABLE page (page_id INT);\\nINSERT INTO page VALUES (1);\\n"
    result = env.run("backup", "--from-command", f"printf '{dump}'", "--name", "db/wiki",
                     "--filename", "wiki.sql")
    assert result.code == 0, result.err
    return media


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


MEDIA_RUNBOOK = """\
    source = "media"
    [sandbox]
    type = "directory"
    path = "{root}"
    [[validations]]
    type = "files"
    [[validations]]
    type = "sample"
    count = 5
    [[validations]]
    type = "command"
    run = 'test -f "$DRTOOL_SANDBOX_DIR/media/README"'
    [objectives]
    rto = "{rto}"
    rpo = "{rpo}"
"""


def media_runbook(env: DrEnv, rto: str = "15m", rpo: str = "26h") -> tuple[str, Path]:
    root = env.tmp / "sandboxes"
    return write(env.tmp / "media-check.toml", MEDIA_RUNBOOK.format(root=root, rto=rto, rpo=rpo)), root


def run_with_clock(env: DrEnv, path: str, start: datetime, restore_minutes: float = 7,
                   **options: object) -> tuple[object, list[str]]:
    clock = FakeClock(start)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if ": restored " in line:
            clock.advance(minutes=restore_minutes)
    with env.session() as session:
        result = rehearse(session, load_runbook(path), RehearseOptions(clock=clock, log=log, **options))
    return result, lines


def latest_time(env: DrEnv, name: str) -> datetime:
    with env.session() as session:
        return session.snapshots(name)[-1].time


def test_passing_rehearsal_records_exact_rto_and_rpo(repo_env: DrEnv) -> None:
    populate(repo_env)
    path, root = media_runbook(repo_env)
    start = latest_time(repo_env, "media") + timedelta(hours=3)
    result, lines = run_with_clock(repo_env, path, start)
    assert result.status == "passed", result.failed_checks
    step = result.steps[0]
    assert step.rto_seconds == 7 * 60
    assert step.rpo_seconds == 3 * 3600
    assert [c.status for c in step.checks] == ["passed"] * 3
    assert list(root.iterdir()) == []  # torn down
    assert any("re-hash a sample of 5" in line for line in lines)
    with repo_env.session() as session:
        assert session.repo.list_objects("rehearsals") == [result.id]
        history = rehearsal_history(session.catalog)
        assert [d["id"] for d in history] == [result.id]
        assert history[0]["rto_seconds"] == 420 and history[0]["rpo_seconds"] == 10800
        summary = last_rehearsal(session.catalog, "media")
        assert summary is not None and summary.status == "passed"
        assert (summary.rto_seconds, summary.rto_objective) == (420, 900)
        assert (summary.rpo_seconds, summary.rpo_objective) == (10800, 26 * 3600)
        assert last_rehearsal(session.catalog, "db/wiki") is None


def test_history_survives_catalog_loss(repo_env: DrEnv) -> None:
    populate(repo_env)
    path, _root = media_runbook(repo_env)
    result, _ = run_with_clock(repo_env, path, latest_time(repo_env, "media") + timedelta(hours=1))
    with repo_env.session() as session:
        remove_rehearsals(session.catalog, [result.id])
        assert last_rehearsal(session.catalog, "media") is None
        rebuilt = rebuild_rehearsals(session)
        assert (rebuilt.added, rebuilt.total, rebuilt.damaged) == (1, 1, [])
        assert last_rehearsal(session.catalog, "media").id == result.id  # type: ignore[union-attr]
        assert rebuild_rehearsals(session).added == 0  # idempotent
    for suffix in ("", "-wal", "-shm"):
        Path(str(repo_env.catalog) + suffix).unlink(missing_ok=True)
    out = repo_env.run("rehearsals", "--source", "media", "--json")
    assert out.code == 0, out.err
    assert [d["id"] for d in json.loads(out.out)] == [result.id]


def test_objective_too_tight_fails_showing_the_measured_value(repo_env: DrEnv) -> None:
    populate(repo_env)
    path, root = media_runbook(repo_env, rto="5m", rpo="2h")
    result, lines = run_with_clock(repo_env, path, latest_time(repo_env, "media") + timedelta(hours=3))
    assert result.status == "failed"
    assert "step 'media-check': objective RTO missed: measured 7m, objective 5m" in result.failed_checks
    assert "step 'media-check': objective RPO missed: measured 3h, objective 2h" in result.failed_checks
    assert all(c.status == "passed" for c in result.steps[0].checks)
    assert list(root.iterdir()) == []


def test_cli_objective_miss_exits_1_with_measured_vs_objective(repo_env: DrEnv) -> None:
    populate(repo_env)
    path, _root = media_runbook(repo_env, rpo="1s")
    with repo_env.session() as session:  # make the snapshot older than the 1s objective
        snap_time = session.snapshots("media")[-1].time
    while datetime.now(timezone.utc) - snap_time < timedelta(seconds=1.5):
        pass
    result = repo_env.run("rehearse", path)
    assert result.code == 1, result.out + result.err
    assert "objective RPO missed: measured " in result.out
    assert "objective 1.0s" in result.out
    assert "rehearsal media-check: FAILED" in result.out
    assert "1 of 1 rehearsal(s) failed" in result.err


def test_damaged_repository_fails_names_the_step_and_leaves_no_sandbox(repo_env: DrEnv) -> None:
    populate(repo_env)
    with repo_env.session() as session:
        session.repo.load_index()
        snap = session.snapshots("media")[-1]
        node = next(n for p, n in walk_tree(session.repo, snap.tree) if n.content)
        pack = pack_name(session.repo.locate(bytes.fromhex(node.content[0])).pack_id)
    (repo_env.repo / pack).unlink()
    path, root = media_runbook(repo_env)
    result = repo_env.run("rehearse", path)
    assert result.code == 1, result.out + result.err
    assert "step 'media-check' failed while restoring" in result.out
    assert pack in result.out
    assert list(root.iterdir()) == []
    history = json.loads(repo_env.run("rehearsals", "--json").out)
    assert history[-1]["status"] == "failed"
    assert history[-1]["steps"][0]["error"].startswith("restoring: ")
    assert [c["status"] for c in history[-1]["steps"][0]["checks"]] == ["skipped"] * 3


def test_whole_site_drill_chains_steps_and_checks_drill_objectives(repo_env: DrEnv) -> None:
    populate(repo_env)
    root = repo_env.tmp / "sandboxes"
    path = write(repo_env.tmp / "site.toml", f"""\
        name = "site"
        seed = 42
        [objectives]
        rto = "10m"
        [[steps]]
        name = "media"
        source = "media"
        random_within = "30d"
        sandbox = {{ type = "directory", path = "{root}" }}
        validations = [{{ type = "files", tolerance = "1%" }}]
        [[steps]]
        name = "wiki-dump"
        source = "db/wiki"
        [steps.sandbox]
        type = "directory"
        path = "{root}"
        [[steps.validations]]
        type = "command"
        run = ["sh", "-c", 'grep -q "CREATE TABLE page" wiki.sql && test -d "$DRTOOL_STEP_MEDIA_DIR/media"']
        [[steps]]
        name = "ghost"
        source = "no-such-source"
        sandbox = {{ type = "directory", path = "{root}" }}
    """)
    result, lines = run_with_clock(repo_env, path, latest_time(repo_env, "db/wiki") + timedelta(hours=1))
    media, wiki, ghost = result.steps
    assert (media.status, wiki.status, ghost.status) == ("passed", "passed", "failed")
    assert "no snapshot named 'no-such-source'" in ghost.error
    assert result.status == "failed" and result.rto_seconds is None
    assert wiki.rto_seconds == 7 * 60
    assert list(root.iterdir()) == []
    assert result.seed == 42


def test_random_within_is_reproducible_with_a_seed(repo_env: DrEnv) -> None:
    populate(repo_env)
    for _ in range(2):
        assert repo_env.run("backup", str(repo_env.tmp / "media"), "--name", "media").code == 0
    path = write(repo_env.tmp / "rnd.toml", f"""\
        source = "media"
        random_within = "30d"
        sandbox = {{ type = "directory", path = "{repo_env.tmp / 'sb'}" }}
    """)
    with repo_env.session() as session:
        snaps = session.snapshots("media")
    start = snaps[-1].time + timedelta(seconds=1)
    picks = []
    for seed in (1, 1, 2, 3, 4, 5):
        result, _ = run_with_clock(repo_env, path, start, seed=seed)
        step = result.steps[0]
        assert step.status == "passed"
        assert snaps[0].time <= step.target <= start
        assert step.snapshot.time <= step.target
        assert step.rpo_seconds == round((step.target - step.snapshot.time).total_seconds(), 3)
        picks.append(step.target)
    assert picks[0] == picks[1]
    assert len(set(picks)) > 2


def test_point_in_time_picks_the_snapshot_before_it(repo_env: DrEnv) -> None:
    populate(repo_env)
    assert repo_env.run("backup", str(repo_env.tmp / "media"), "--name", "media").code == 0
    with repo_env.session() as session:
        first, second = session.snapshots("media")
    target = first.time + (second.time - first.time) / 2
    path = write(repo_env.tmp / "pit.toml", f"""\
        source = "media"
        point_in_time = "{target.isoformat()}"
        sandbox = {{ type = "directory", path = "{repo_env.tmp / 'sb'}" }}
    """)
    result, _ = run_with_clock(repo_env, path, second.time + timedelta(days=1))
    step = result.steps[0]
    assert step.snapshot.id == first.id
    assert step.rpo_seconds == round((target - first.time).total_seconds(), 3)


def test_sample_check_detects_a_changed_file_and_files_check_a_missing_one(repo_env: DrEnv) -> None:
    populate(repo_env)
    with repo_env.session() as session:
        snap = session.snapshots("media")[-1]
        sandbox = Sandbox(SandboxSpec(path=str(repo_env.tmp / "sb")), "unit")
        sandbox.create()
        try:
            sandbox.restore_files(session, snap)
            victim = Path(sandbox.data_dir) / "media" / "img" / "a" / "3.jpg"
            data = bytearray(victim.read_bytes())
            data[100] ^= 1
            victim.write_bytes(bytes(data))
            (Path(sandbox.data_dir) / "media" / "img" / "a" / "5.jpg").unlink()
            clock = FakeClock(datetime.now(timezone.utc))
            runner = CheckRunner(session, sandbox, snap, random.Random(1), clock)
            sample = runner.run(Check("sample", "s", "x:1", count=100))
            assert sample.status == "failed"
            assert "media/img/a/3.jpg (content differs at offset 0)" in sample.detail
            assert "media/img/a/5.jpg (missing)" in sample.detail
            strict = runner.run(Check("files", "f", "x:2", tolerance=0.0))
            loose = runner.run(Check("files", "f", "x:3", tolerance=0.5))
            assert (strict.status, loose.status) == ("failed", "passed")
            assert "restored 12 file(s)" in strict.detail and "the manifest says 13" in strict.detail
        finally:
            sandbox.teardown()
    assert not os.path.exists(sandbox.path)


def test_keep_leaves_the_sandbox_and_says_where(repo_env: DrEnv) -> None:
    populate(repo_env)
    path, root = media_runbook(repo_env)
    result = repo_env.run("rehearse", path, "--keep", "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)[0]
    kept = doc["steps"][0]["kept"]
    [sandbox] = list(root.iterdir())
    assert str(sandbox) in kept and "rm -rf" in kept
    assert (sandbox / "data" / "media" / "README").read_text() == "media store\n"


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_interrupt_tears_the_sandbox_down(repo_env: DrEnv, signame: str) -> None:
    populate(repo_env)
    root = repo_env.tmp / "sandboxes"
    path = write(repo_env.tmp / "slow.toml", f"""\
        source = "media"
        sandbox = {{ type = "directory", path = "{root}" }}
        [[validations]]
        type = "command"
        run = 'touch "$DRTOOL_SANDBOX_DIR/started"; kill -{signame[3:]} $PPID; sleep 30'
    """)
    proc = repo_env.spawn("rehearse", path, timeout=60)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert "aborted" in proc.stderr or "interrupted" in proc.stderr
    assert list(root.iterdir()) == []


def test_rehearsals_listing_filters_by_source(repo_env: DrEnv) -> None:
    populate(repo_env)
    path, _root = media_runbook(repo_env)
    wiki = write(repo_env.tmp / "wiki.toml", f"""\
        source = "db/wiki"
        sandbox = {{ type = "directory", path = "{repo_env.tmp / 'sb'}" }}
    """)
    assert repo_env.run("rehearse", path, wiki).code == 0
    text = repo_env.run("rehearsals")
    assert text.code == 0 and "2 rehearsal(s)" in text.out
    assert "media-check" in text.out and "wiki" in text.out
    only = json.loads(repo_env.run("rehearsals", "--source", "db/wiki", "--json").out)
    assert [d["runbook"] for d in only] == ["wiki"]
    assert only[0]["steps"][0]["status"] == "passed"


# ----- runbook validation ----------------------------------------------------------
BAD_RUNBOOKS = [
    ('source = "m"\nsandbox = { type = "vm" }\n', 2, "sandbox.type: unknown sandbox type 'vm'"),
    ('source = "m"\n\n[objectives]\nrto = "15 minutes"\n', 4, "objectives.rto: invalid duration"),
    ('source = "m"\nlatest = true\nrandom_within = "3d"\n', 3, "random_within: give only one recovery point"),
    ('source = "m"\n[[validations]]\ntype = "sql"\nquery = "select 1"\nmin = 1\n', 3,
     "validations[0].type: sql validations need a postgresql or mariadb sandbox"),
    ('name = "x"\n[[steps]]\nsource = "a"\n[[steps]]\nname = "b"\n', 4,
     "steps[1]: missing key 'source'"),
    ('[[steps]]\nsource = "a"\n[[steps]]\nsource = "b"\n[steps.sandbox]\ntype = "mariadb"\n'
     '[[steps.validations]]\ntype = "sql"\nquery = "select 1"\nexpect = 1\n[[steps.validations]]\n'
     'type = "sql"\nquery = "x"\nmin = "lots"\n', 14, "steps[1].validations[1].min: must be a number"),
    ('[[steps]]\nsource = "a"\nvalidations = [\n  { type = "files" },\n  { type = "sample", colour = 1 },\n]\n',
     5, "steps[0].validations[1].colour: unknown key"),
    ('source = "m"\npoint_in_time = "yesterday-ish"\n', 2, "point_in_time: invalid point in time"),
    ('source = "m"\n[[validations]]\ntype = "files"\ntolerance = 5\n', 4,
     'validations[0].tolerance: must be a percentage such as "1%"'),
    ('source = "m"\n[[validations]]\ntype = "command"\n', 2, "validations[0]: missing key 'run'"),
    ('sorce = "m"\n', 1, "sorce: unknown key"),
    ('source = "m"\n"quoted key" = 1\n', 2, "quoted key: unknown key"),
    ('name = "m"\ndescription = """\n[[steps]]\n"""\nsteps = 3\n', 5, "steps: must be an array of tables"),
]


@pytest.mark.parametrize("text,line,message", BAD_RUNBOOKS)
def test_runbook_errors_name_file_line_and_key(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_runbook(str(path))
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert message in str(info.value)


def test_invalid_toml_and_cli_exit_code_2(repo_env: DrEnv) -> None:
    path = repo_env.tmp / "broken.toml"
    path.write_text('source = "m"\n[sandbox\n')
    result = repo_env.run("rehearse", str(path))
    assert result.code == 2
    assert f"{path}: not valid TOML" in result.err and "line 2" in result.err
    good, _ = media_runbook(repo_env)
    bad = write(repo_env.tmp / "bad.toml", 'source = "m"\nlatest = false\n')
    result = repo_env.run("rehearse", good, bad)
    assert result.code == 2 and f"{bad}:2: latest: must be true" in result.err
    assert repo_env.run("rehearsals", "--json").out.strip() == "[]"  # nothing ran


def test_shipped_runbooks_parse() -> None:
    books = sorted((ROOT / "runbooks").glob("*.toml"))
    assert {p.name for p in books} >= {"nightly-wiki-db.toml", "quarterly-drill.toml", "media-files.toml"}
    for path in books:
        book = load_runbook(str(path))
        assert book.steps and all(s.source for s in book.steps)


def test_runbook_model_defaults() -> None:
    book = parse_runbook('source = "media"\n', "runbooks/x.toml")
    assert book.name == "x" and book.steps[0].sandbox.type == "directory"
    assert book.steps[0].point.mode == "latest"


def test_cli_help_lists_the_commands(dr: DrEnv) -> None:
    out = subprocess.run([sys.executable, "-m", "drtool", "--help"], capture_output=True, text=True,
                         env=dr.env, cwd=ROOT)
    for command in ("rehearse", "rehearsals", "report"):
        assert command in out.stdout


# ----- database sandboxes (real throwaway servers from tests/dbservers.py) ----------------

def test_mariadb_sandbox_replays_binlogs_to_the_recovery_point(repo_env: DrEnv) -> None:
    with dbservers.mariadb_server() as server:
        config = dbservers.write_config(repo_env.tmp / "drtool.toml", str(repo_env.repo),
                                        {"wiki": server.source(dbname="wiki")})
        repo_env.env["DRTOOL_CONFIG"] = str(config)
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        dbservers.insert_events(server, "t0", 5)
        assert repo_env.run("backup", "--source", "wiki").code == 0
        dbservers.insert_events(server, "t1", 10)
        server.sql("FLUSH BINARY LOGS")
        time.sleep(1.1)
        between = datetime.now(timezone.utc)
        time.sleep(1.1)
        dbservers.insert_events(server, "t2", 20)
        server.sql("FLUSH BINARY LOGS")
        assert repo_env.run("mariadb", "binlog-push", "--source", "wiki").code == 0
    root = repo_env.tmp / "sandboxes"
    checks = """
        [[validations]]
        type = "files"
        [[validations]]
        type = "sql"
        query = "SELECT COUNT(*) FROM events"
        expect = {rows}
        [[validations]]
        type = "command"
        run = '''test "$(mariadb -N -e "SELECT COUNT(*) FROM events WHERE tag = 't2'" "$DRTOOL_SANDBOX_DATABASE")" = {t2}'''
    """
    pit = write(repo_env.tmp / "pit.toml", f"""\
        source = "wiki"
        point_in_time = "{between.isoformat()}"
        sandbox = {{ type = "mariadb", path = "{root}" }}
    """ + textwrap.dedent(checks.format(rows=15, t2=0)))
    latest = write(repo_env.tmp / "latest.toml", f"""\
        source = "wiki"
        sandbox = {{ type = "mariadb", path = "{root}" }}
    """ + textwrap.dedent(checks.format(rows=35, t2=20)))
    result = repo_env.run("rehearse", pit, latest, "--json")
    assert result.code == 0, result.out + result.err
    docs = json.loads(result.out)
    assert [d["status"] for d in docs] == ["passed", "passed"]
    pit_step, latest_step = docs[0]["steps"][0], docs[1]["steps"][0]
    assert pit_step["recovered_to"] == between.isoformat() and pit_step["rpo_seconds"] == 0
    assert latest_step["recovered_to"] > between.isoformat()
    assert list(root.iterdir()) == []


def test_postgres_sandbox_recovers_base_backup_and_wal_to_the_point(repo_env: DrEnv) -> None:
    password_file = repo_env.tmp / "drtool-password"
    password_file.write_text(PASSWORD + "\n")
    env = dbservers.drtool_env(repo_env.env, str(password_file))
    with dbservers.postgres_server(archive_env=env, source="pg") as server:
        config = dbservers.write_config(repo_env.tmp / "drtool.toml", str(repo_env.repo),
                                        {"pg": server.source(method="basebackup")})
        env["DRTOOL_CONFIG"] = str(config)
        repo_env.env.update(DRTOOL_CONFIG=str(config), DRTOOL_PASSWORD_FILE=str(password_file))
        assert repo_env.run("backup", "--source", "pg").code == 0
        server.sql("CREATE TABLE events (tag text, n int)")
        server.sql("INSERT INTO events SELECT 't1', g FROM generate_series(1, 10) g")
        server.switch_wal_and_wait()
        time.sleep(1.1)
        between = datetime.now(timezone.utc)
        time.sleep(1.1)
        server.sql("INSERT INTO events SELECT 't2', g FROM generate_series(1, 20) g")
        server.switch_wal_and_wait()
        root = repo_env.tmp / "sandboxes"
        path = write(repo_env.tmp / "pg.toml", f"""\
            source = "pg"
            point_in_time = "{between.isoformat()}"
            sandbox = {{ type = "postgresql", path = "{root}" }}
            [[validations]]
            type = "sql"
            query = "SELECT count(*) FROM events"
            expect = 10
            [[validations]]
            type = "command"
            run = '''test "$(psql -Atc "SELECT count(*) FROM events WHERE tag = 't2'")" = 0'''
        """)
        result = repo_env.run("rehearse", path, "--json")
    assert result.code == 0, result.out + result.err
    step = json.loads(result.out)[0]["steps"][0]
    assert step["status"] == "passed" and step["recovered_to"] == between.isoformat()
    assert list(root.iterdir()) == []
