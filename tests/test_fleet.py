"""Fleet rehearsals (``rehearse --sample N``) and rehearsal coverage (``rehearse_every``):
which sources a night picks, which recovery point, and how status, metrics and JSON report
sources whose restores were not proven recently enough.  Real repository, real restores."""
from __future__ import annotations

import datetime as dt
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, DrEnv
from drtool.api import fleet as fleet_api
from drtool.backup.run import backup_paths
from drtool.monitor import metrics, status
from drtool.rehearse.fleet import order_sources, recovery_point

UTC = dt.timezone.utc
NAMES = ("alpha", "beta", "gamma")


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


@pytest.fixture
def fleet(repo_env: DrEnv, tmp_path: Path) -> DrEnv:
    """Three configured file sources, backed up; alpha and beta must pass a rehearsal every 7 days."""
    lines = ['[status]\nmax_age = "60d"\n']
    for name in NAMES:
        src = tmp_path / "src" / name
        src.mkdir(parents=True)
        for i in range(3):
            (src / f"{name}-{i}.dat").write_bytes(name.encode() * (100 + i))
        lines.append(f'[sources.{name}]\ntype = "files"\npaths = ["{src}"]\n'
                     + ('rehearse_every = "7d"\n' if name != "gamma" else ""))
    config = tmp_path / "drtool.toml"
    config.write_text("".join(lines))
    repo_env.env.update(DRTOOL_CONFIG=str(config), DRTOOL_SANDBOX_ROOT=str(tmp_path / "sandboxes"))
    assert repo_env.run("backup", "--all").code == 0
    return repo_env


def sampled_sources(out: str) -> list[str]:
    return [json.loads(out)[i]["steps"][0]["source"] for i in range(len(json.loads(out)))]


def test_status_warns_until_every_scheduled_source_passed_a_rehearsal(fleet: DrEnv) -> None:
    before = fleet.run("status", "--json")
    assert before.code == 1, before.out  # WARNING: the documented Nagios exit code
    doc = json.loads(before.out)
    cov = {s["name"]: s["coverage"] for s in doc["sources"]}
    assert cov["alpha"]["state"] == "never" and cov["alpha"]["overdue"] is True
    assert cov["gamma"]["state"] == "unscheduled" and cov["gamma"]["overdue"] is False
    assert "alpha: no passing rehearsal recorded (rehearse_every 7d)" in doc["summary"]

    first = fleet.run("rehearse", "--sample", "2", "--seed", "11", "--json")
    assert first.code == 0, first.err
    picked = sampled_sources(first.out)
    assert len(picked) == 2 and len(set(picked)) == 2
    assert re.search(r"sample: 2 of 3 configured source\(s\), least recently rehearsed first: "
                     r"\w+ \(never rehearsed\), \w+ \(never rehearsed\)", first.err)
    second = fleet.run("rehearse", "--sample", "1", "--json")
    assert second.code == 0, second.err
    assert sampled_sources(second.out) == sorted(set(NAMES) - set(picked))  # the one never rehearsed
    third = fleet.run("rehearse", "--sample", "1", "--json")
    assert sampled_sources(third.out) == [picked[0]] or sampled_sources(third.out) == [picked[1]]
    assert sampled_sources(third.out) != sampled_sources(second.out)  # least recently, not random

    after = fleet.run("status", "--json")
    assert after.code == 0, after.out
    text = fleet.run("status").out
    assert re.search(r"^OK: alpha: newest backup \d+s ago, 1 snapshot\(s\), restore proven \d+s ago "
                     r"\(next due in 6d 23h\)$", text, re.M), text
    cov = {s["name"]: s["coverage"] for s in json.loads(after.out)["sources"]}
    for name in NAMES:
        assert cov[name]["last_pass"] is not None and cov[name]["last_fail"] is None
    due = dt.datetime.fromisoformat(cov["alpha"]["due"]) - dt.datetime.fromisoformat(cov["alpha"]["last_pass"])
    assert due == dt.timedelta(days=7) and cov["alpha"]["state"] == "ok"
    history = fleet.run("rehearsals", "--source", "beta", "--json")
    assert [d["runbook"] for d in json.loads(history.out)] == ["sampled"] * len(json.loads(history.out))


def test_overdue_and_failed_rehearsals_in_status_and_metrics(fleet: DrEnv, tmp_path: Path) -> None:
    assert fleet.run("rehearse", "--sample", "3", "--seed", "1").code == 0
    data = {"status": {"max_age": "60d"},
            "sources": {n: {"type": "files", "paths": ["/x"], "rehearse_every": "7d"} for n in NAMES}}
    with fleet.session() as session:
        report = status.collect(session, data, now=now() + dt.timedelta(days=8))
    assert report.state == status.WARNING
    assert any(m.startswith("no passing rehearsal for 8d") and m.endswith("(rehearse_every 7d)")
               for m in report.sources[0].messages), report.sources[0].messages
    text = metrics.render(report)
    assert re.search(r'^drtool_rehearsal_overdue\{name="alpha"\} 1$', text, re.M)
    assert re.search(r'^drtool_rehearsal_last_pass_timestamp_seconds\{name="gamma"\} \d+', text, re.M)
    assert "drtool_rehearsal_last_fail_timestamp_seconds" not in text

    # a source that was never backed up: its sampled rehearsal fails, and counts as a fail
    cfg = Path(fleet.env["DRTOOL_CONFIG"])
    cfg.write_text(cfg.read_text() + '[sources.delta]\ntype = "files"\npaths = ["/nonexistent"]\n'
                   'rehearse_every = "1d"\n')
    failed = fleet.run("rehearse", "--sample", "1", "--json")
    assert failed.code == 1 and sampled_sources(failed.out) == ["delta"]
    assert "no snapshot named 'delta'" in failed.err
    result = fleet.run("status", "--json")
    cov = {s["name"]: s["coverage"] for s in json.loads(result.out)["sources"]}
    assert cov["delta"]["last_fail"] is not None and cov["delta"]["state"] == "never"
    assert cov["delta"]["last_pass"] is None and cov["alpha"]["last_fail"] is None


def test_recovery_point_is_a_random_snapshot_within_the_window(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with repo_env.session() as session:
        for days in (60, 20, 10, 3, 1):
            (src / "f").write_bytes(str(days).encode())
            backup_paths(session, [str(src)], "media", clock=lambda d=days: now() - dt.timedelta(days=d))
        snaps = session.snapshots("media")
    chosen = set()
    for seed in range(30):
        point, note = recovery_point("directory", snaps, dt.timedelta(days=30), now(), random.Random(seed))
        assert point.mode == "point_in_time" and note == ""
        assert now() - point.when < dt.timedelta(days=30)  # never the 60-day-old snapshot
        chosen.add(point.when)
    assert chosen == {s.time for s in snaps[1:]}  # every snapshot in the window gets its turn
    point, note = recovery_point("directory", snaps, dt.timedelta(days=30), now() + dt.timedelta(days=90),
                                 random.Random(1))
    assert point.when == snaps[-1].time and note.startswith("no snapshot within 30d; using the newest")
    archived = [(now() - dt.timedelta(days=50), now() - dt.timedelta(days=25)),
                (now() - dt.timedelta(days=12), now() - dt.timedelta(days=11))]
    moments = {recovery_point("mariadb", snaps, dt.timedelta(days=30), now(), random.Random(s),
                              archived)[0].when for s in range(40)}
    assert all(archived[0][0] + dt.timedelta(days=20) <= m <= archived[0][1] or
               archived[1][0] <= m <= archived[1][1] for m in moments)  # recoverable and within 30d
    assert any(m > archived[1][0] for m in moments) and any(m < archived[0][1] for m in moments)
    dump_point, _ = recovery_point("mariadb", snaps, dt.timedelta(days=30), now(), random.Random(1), [])
    assert dump_point.mode == "point_in_time" and dump_point.when in {s.time for s in snaps[1:]}


def test_every_source_type_has_a_sandbox() -> None:
    from drtool.errors import ConfigError
    from drtool.rehearse.fleet import sandbox_type
    kinds = {t: sandbox_type("x", {"type": t}) for t in ("files", "command", "s3", "swift", "postgresql",
                                                         "mariadb", "mysql")}
    assert kinds == {"files": "directory", "command": "directory", "s3": "directory", "swift": "directory",
                     "postgresql": "postgresql", "mariadb": "mariadb", "mysql": "mariadb"}
    with pytest.raises(ConfigError, match="cannot be rehearsed"):
        sandbox_type("x", {"type": "tape"})


def test_order_is_least_recently_rehearsed_first_then_random() -> None:
    t = now()
    last = {"a": t - dt.timedelta(days=1), "b": None, "c": t - dt.timedelta(days=9), "d": None,
            "e": t - dt.timedelta(days=9)}
    orders = {tuple(p.source for p in order_sources(sorted(last), last, random.Random(s))) for s in range(20)}
    for order in orders:
        assert set(order[:2]) == {"b", "d"} and set(order[2:4]) == {"c", "e"} and order[4] == "a"
    assert len(orders) == 4  # ties are broken at random, both ways


def test_sample_needs_configured_sources_and_rejects_mixing(repo_env: DrEnv, tmp_path: Path) -> None:
    result = repo_env.run("rehearse", "--sample", "2")
    assert result.code == 2 and "the config has no [sources.*]" in result.err
    assert "Traceback" not in result.err
    book = tmp_path / "x.toml"
    book.write_text('source = "x"\n')
    mixed = repo_env.run("rehearse", "--sample", "1", str(book))
    assert mixed.code == 2 and "not both" in mixed.err
    assert repo_env.run("rehearse", "--window", "3d", str(book)).code == 2
    assert repo_env.run("rehearse", "--sample", "0").code == 2


def test_bad_rehearse_every_is_reported(repo_env: DrEnv, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[sources.m]\ntype = "files"\npaths = ["/srv"]\nrehearse_every = "weekly"\n')
    result = repo_env.run("--config", str(config), "status")
    assert result.code == 3 and "[sources.m] rehearse_every:" in result.out
    with repo_env.session() as session:
        rows = fleet_api.coverage(session, {"sources": {"m": {"rehearse_every": "2d"}}}, now())
    assert rows == [{"source": "m", "state": "never", "rehearse_every_seconds": 172800.0, "last_pass": None,
                     "last_fail": None, "due": None, "overdue": True}]


# ----- the shipped schedules run the documented commands --------------------------------------
def unit_settings(path: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    env: dict[str, str] = {}
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" not in line or line.startswith("#") or line.startswith("["):
            continue
        key, value = line.split("=", 1)
        keys.setdefault(key, []).append(value)
        if key == "Environment":
            name, val = value.split("=", 1)
            env[name] = val
    return env, keys


def as_argv(command: str, env: dict[str, str]) -> list[str]:
    for name, value in env.items():
        command = command.replace("${" + name + "}", value)
    argv = command.lstrip("-").split()
    assert argv[0] == "/usr/local/bin/drtool"
    return [sys.executable, "-m", "drtool", *argv[1:]]


def test_systemd_timer_and_service_run_the_sampled_rehearsal(fleet: DrEnv, tmp_path: Path) -> None:
    env, keys = unit_settings(ROOT / "scripts/systemd/drtool-rehearse@.service")
    _tenv, timer = unit_settings(ROOT / "scripts/systemd/drtool-rehearse@.timer")
    calendar = subprocess.run(["systemd-analyze", "calendar", timer["OnCalendar"][0]], capture_output=True,
                              text=True, env=fleet.env)
    assert calendar.returncode == 0, calendar.stderr
    assert env["DRTOOL_CONFIG"] == "/etc/drtool/%i.toml" and env["DRTOOL_REHEARSE_SAMPLE"] == "3"
    env.update(DRTOOL_METRICS_TEXTFILE=str(tmp_path / "drtool.prom"), DRTOOL_SANDBOX_ROOT=str(tmp_path / "var-tmp"))
    (tmp_path / "var-tmp").mkdir()
    run_env = {**fleet.env, **{k: v for k, v in env.items() if k != "DRTOOL_CONFIG"}}
    start = subprocess.run(as_argv(keys["ExecStart"][0], env), env=run_env, capture_output=True, text=True,
                           timeout=300)
    assert start.returncode == 0, start.stderr + start.stdout
    assert start.stdout.count("rehearsal sampled: PASSED") == 3
    post = subprocess.run(as_argv(keys["ExecStopPost"][0], env), env=run_env, capture_output=True, text=True,
                          timeout=120)
    assert post.returncode == 0, post.stderr
    prom = (tmp_path / "drtool.prom").read_text()
    assert 'drtool_rehearsal_overdue{name="alpha"} 0' in prom
    assert list((tmp_path / "var-tmp").iterdir()) == []  # every sandbox was removed


def test_cron_line_runs_the_sampled_rehearsal_and_is_quiet_on_success(fleet: DrEnv, tmp_path: Path) -> None:
    line = next(l for l in (ROOT / "scripts/cron.example").read_text().splitlines()
                if "rehearse --sample" in l and not l.startswith("#"))
    fields = line.split(None, 6)
    assert fields[5] == "drtool"
    command = fields[6].replace("/var/lib/prometheus/node-exporter/drtool.prom", str(tmp_path / "m.prom"))
    command = command.replace("DRTOOL_SANDBOX_ROOT=/var/tmp", f"DRTOOL_SANDBOX_ROOT={tmp_path}")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "drtool").write_text(f'#!/bin/sh\nexec {sys.executable} -m drtool "$@"\n')
    (bindir / "drtool").chmod(0o755)
    env = {**fleet.env, "PATH": f"{bindir}:/usr/bin:/bin"}
    quiet = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stdout + quiet.stderr
    assert "drtool_rehearsal_last_pass_timestamp_seconds" in (tmp_path / "m.prom").read_text()
    history = fleet.run("rehearsals", "--json")
    assert len(json.loads(history.out)) == 3
    Path(fleet.env["DRTOOL_CONFIG"]).write_text(Path(fleet.env["DRTOOL_CONFIG"]).read_text()
                                                + '[sources.never]\ntype = "files"\npaths = ["/nonexistent"]\n')
    loud = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300)
    assert "no snapshot named 'never'" in loud.stdout  # a failure prints, so cron mails it


def test_sampled_database_source_replays_to_a_random_moment(repo_env: DrEnv, tmp_path: Path) -> None:
    """A MariaDB source with archived binlogs: the sample restores it into a throwaway server at a
    random moment of the window (base + binlog replay), next to a files source."""
    import time

    import dbservers
    media = tmp_path / "media"
    media.mkdir()
    (media / "a.jpg").write_bytes(b"jpeg" * 100)
    with dbservers.mariadb_server() as server:
        config = dbservers.write_config(tmp_path / "drtool.toml", str(repo_env.repo), {
            "wiki": {**server.source(dbname="wiki"), "rehearse_every": "1d"},
            "media": {"type": "files", "paths": [str(media)]}})
        repo_env.env.update(DRTOOL_CONFIG=str(config), DRTOOL_SANDBOX_ROOT=str(tmp_path / "sandboxes"))
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        dbservers.insert_events(server, "t0", 5)
        assert repo_env.run("backup", "--all").code == 0
        dbservers.insert_events(server, "t1", 10)
        time.sleep(1.1)
        server.sql("FLUSH BINARY LOGS")
        assert repo_env.run("mariadb", "binlog-push", "--source", "wiki").code == 0
    (tmp_path / "sandboxes").mkdir()
    result = repo_env.run("rehearse", "--sample", "2", "--window", "1d", "--seed", "4", "--json")
    assert result.code == 0, result.err
    steps = {d["steps"][0]["source"]: d["steps"][0] for d in json.loads(result.out)}
    wiki = steps["wiki"]
    assert wiki["sandbox"] == "mariadb" and wiki["status"] == "passed"
    assert wiki["recovery_point"].startswith("point in time") and wiki["recovered_to"] == wiki["target"]
    assert wiki["snapshot_time"] <= wiki["recovered_to"] and wiki["rpo_seconds"] == 0
    assert steps["media"]["sandbox"] == "directory"
    assert [c["type"] for c in steps["media"]["checks"]] == ["files", "sample"]
    assert list((tmp_path / "sandboxes").iterdir()) == []
    status = json.loads(repo_env.run("status", "--json").out)
    assert {s["name"]: s["coverage"]["state"] for s in status["sources"]}["wiki"] == "ok"


def test_a_database_series_counts_for_its_configured_source(repo_env: DrEnv) -> None:
    """``pg-dumps/wiki`` (a series of the multi-database source pg-dumps) proves pg-dumps."""
    from test_report_html import synthetic
    from drtool.rehearse.drill import record
    data = {"sources": {"pg-dumps": {"type": "postgresql", "databases": ["wiki"], "rehearse_every": "7d"},
                        "pg": {"type": "postgresql", "dbname": "x", "rehearse_every": "7d"}}}
    with repo_env.session() as session:
        record(session, synthetic("sampled", now() - dt.timedelta(days=1), [("pg-dumps/wiki", 5.0, 0.0, True)]))
        cov = status.source_coverage(session, data, ["pg", "pg-dumps", "pg-dumps/wiki"], now())
    assert cov["pg-dumps"].state == "ok" and cov["pg-dumps/wiki"].last_pass is not None
    assert cov["pg"].state == "never" and cov["pg"].last_pass is None  # "pg" is not a prefix of "pg-dumps/"


def test_database_sources_accept_the_keys_every_source_may_have() -> None:
    """status thresholds, retention and rehearse_every were documented for every source, but a
    PostgreSQL or MariaDB table holding them was refused as 'unknown key(s)'."""
    from drtool.errors import ConfigError
    from drtool.sources.mariadb import MariaSource
    from drtool.sources.postgres import PgSource
    shared = {"status": {"max_age": "2d"}, "retention": {"keep_daily": 7}, "rehearse_every": "7d"}
    assert PgSource.from_config("pg", {"type": "postgresql", "dbname": "app", **shared}).dbname == "app"
    assert MariaSource.from_config("wiki", {"type": "mariadb", "dbname": "wiki", **shared}).name == "wiki"
    with pytest.raises(ConfigError, match="unknown key"):
        PgSource.from_config("pg", {"type": "postgresql", "dbname": "app", "rehearse_evry": "7d"})
