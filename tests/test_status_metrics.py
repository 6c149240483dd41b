"""status (Nagios exit codes and first line), metrics (Prometheus textfile,
parsed back), failure notifications and the JSON backup summary line."""
from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import logging
import re
import threading
from pathlib import Path

import pytest

from conftest import DrEnv
from drtool.cli.logs import JsonFormatter
from drtool.monitor import notify, status
from drtool.backup.run import backup_paths

UTC = dt.timezone.utc
REQUIRED = ("drtool_last_success_timestamp_seconds", "drtool_snapshot_size_bytes", "drtool_bytes_added",
            "drtool_backup_duration_seconds", "drtool_rpo_seconds")


def now() -> dt.datetime:
    return dt.datetime.now(UTC)


def backup_aged(dr: DrEnv, src: Path, name: str, age: dt.timedelta, size: int = 10_000) -> str:
    src.mkdir(parents=True, exist_ok=True)
    (src / "data").write_bytes(b"x" * size)
    with dr.session() as session:
        return backup_paths(session, [str(src)], name, clock=lambda: now() - age).snapshot.id


def config(tmp: Path, extra: str = "") -> Path:
    path = tmp / "drtool.toml"
    path.write_text('[sources.files]\ntype = "files"\npaths = ["/srv"]\n'
                    '[sources.db]\ntype = "command"\ncommand = "true"\n' + extra)
    return path


# ----- status -----------------------------------------------------------------------------------
def test_status_fresh_source_is_ok(repo_env: DrEnv, tmp_path: Path) -> None:
    backup_aged(repo_env, tmp_path / "src", "files", dt.timedelta(hours=2))
    result = repo_env.run("status")
    assert result.code == 0, result.out + result.err
    first = result.out.splitlines()[0]
    assert first.startswith("DRTOOL OK - 1 source(s), newest backup 2h")
    assert re.search(r"\| 'age_files'=7\d\d\ds;103680;129600;0; 'size_files'=10000B", first)


@pytest.mark.parametrize("hours,code,first", [
    (30, 1, "DRTOOL WARNING - files: newest backup 1d 6h old (warn 1d 4h) (1 of 1 source(s) not OK) |"),
    (40, 2, "DRTOOL CRITICAL - files: newest backup 1d 16h old (max 1d 12h) (1 of 1 source(s) not OK) |"),
])
def test_status_old_backup_warns_then_goes_critical(repo_env: DrEnv, tmp_path: Path, hours: int,
                                                   code: int, first: str) -> None:
    backup_aged(repo_env, tmp_path / "src", "files", dt.timedelta(hours=hours))
    result = repo_env.run("status")
    assert result.code == code, result.out
    assert result.out.startswith(first), result.out
    relaxed = repo_env.run("status", "--max-age", "3d")
    assert relaxed.code == 0, relaxed.out


def test_status_never_backed_up_configured_source_is_critical(repo_env: DrEnv, tmp_path: Path) -> None:
    backup_aged(repo_env, tmp_path / "src", "files", dt.timedelta(hours=1))
    cfg = config(tmp_path)
    result = repo_env.run("--config", str(cfg), "status")
    assert result.code == 2
    assert result.out.startswith("DRTOOL CRITICAL - db: never backed up (1 of 2 source(s) not OK) |")
    assert "OK: files: newest backup" in result.out
    only_files = repo_env.run("--config", str(cfg), "status", "--source", "files", "--json")
    assert only_files.code == 0
    data = json.loads(only_files.out)
    assert data["state"] == "OK" and [s["name"] for s in data["sources"]] == ["files"]


def test_status_thresholds_per_source_from_config(repo_env: DrEnv, tmp_path: Path) -> None:
    backup_aged(repo_env, tmp_path / "a", "files", dt.timedelta(days=3))
    backup_aged(repo_env, tmp_path / "b", "db", dt.timedelta(hours=1))
    cfg = config(tmp_path, '[status]\nmax_age = "2d"\n[sources.files.status]\nmax_age = "8d"\n'
                           'warn_age = "7d"\n')
    result = repo_env.run("--config", str(cfg), "status", "--json")
    data = json.loads(result.out)
    assert result.code == 0, data
    limits = {s["name"]: s["max_age_seconds"] for s in data["sources"]}
    assert limits == {"files": 8 * 86400, "db": 2 * 86400}


def test_status_size_change_warns(repo_env: DrEnv, tmp_path: Path) -> None:
    backup_aged(repo_env, tmp_path / "src", "files", dt.timedelta(hours=3), size=100_000)
    backup_aged(repo_env, tmp_path / "src", "files", dt.timedelta(hours=1), size=10_000)
    result = repo_env.run("status", "--json")
    assert result.code == 1
    source = json.loads(result.out)["sources"][0]
    assert source["size_change_percent"] == -90.0 and "size changed -90%" in source["messages"][0]


def test_status_unreadable_repository_is_unknown(dr: DrEnv, repo_env: DrEnv) -> None:
    missing = dr.run("status", env={"DRTOOL_REPOSITORY": str(dr.tmp / "nowhere")})
    assert missing.code == 3 and missing.out.startswith("DRTOOL UNKNOWN - no drtool repository")
    wrong = repo_env.run("status", "--json", env={"DRTOOL_PASSWORD": "wrong"})
    assert wrong.code == 3 and json.loads(wrong.out)["state"] == "UNKNOWN"
    bad = repo_env.run("status", "--max-age", "soon")
    assert bad.code == 3 and "--max-age" in bad.out


def test_status_empty_repository_is_unknown(repo_env: DrEnv) -> None:
    result = repo_env.run("status")
    assert result.code == 3 and "no sources configured and no snapshots" in result.out


def test_rehearsal_results_are_normalised() -> None:
    class Summary:
        status = "failed"
        finished = dt.datetime(2026, 1, 1, tzinfo=UTC)
        failed_checks = ["row count 0 < 1000"]
    found = status.describe_rehearsal(Summary())
    assert found is not None and found["success"] is False and found["failed_checks"]
    assert status.describe_rehearsal({"status": "passed"})["success"] is True  # type: ignore[index]
    assert status.describe_rehearsal({"status": "skipped"})["success"] is None  # type: ignore[index]
    assert status.describe_rehearsal(None) is None


# ----- metrics ----------------------------------------------------------------------------------
def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """A small parser for the text exposition format; checks HELP/TYPE precede samples."""
    families: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    helped: set[str] = set()
    typed: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helped.add(line.split(" ", 3)[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("gauge", "counter")
            typed.add(name)
        elif line:
            match = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
            assert match, line
            name, labels, value = match.groups()
            assert name in helped and name in typed, f"{name} lacks HELP/TYPE"
            pairs = tuple(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels or ""))
            families.setdefault(name, {})[pairs] = float(value)
    return families


def test_metrics_textfile_parses_back(repo_env: DrEnv, tmp_path: Path) -> None:
    snap_id = backup_aged(repo_env, tmp_path / "src", "files", dt.timedelta(hours=2), size=12_345)
    backup_aged(repo_env, tmp_path / "other", 'db/"wiki"', dt.timedelta(hours=1))
    out = tmp_path / "textfile" / "drtool.prom"
    out.parent.mkdir()
    result = repo_env.run("metrics", "--textfile", str(out))
    assert result.code == 0, result.err
    assert [p.name for p in out.parent.iterdir()] == ["drtool.prom"]  # no temp file left behind
    metrics = parse_metrics(out.read_text())
    for family in REQUIRED:
        assert (("name", "files"),) in metrics[family], family
    files = (("name", "files"),)
    snap = next(s for s in json.loads(repo_env.run("snapshots", "--json").out) if s["id"] == snap_id)
    assert metrics["drtool_snapshot_size_bytes"][files] == 12_345
    assert metrics["drtool_bytes_added"][files] == snap["summary"]["bytes_added"]
    assert metrics["drtool_backup_duration_seconds"][files] == pytest.approx(snap["summary"]["duration"])
    last = dt.datetime.fromisoformat(snap["time"]).timestamp()
    assert metrics["drtool_last_success_timestamp_seconds"][files] == pytest.approx(last, abs=0.01)
    assert 7100 < metrics["drtool_rpo_seconds"][files] < 7400
    assert metrics["drtool_repository_up"][()] == 1
    assert (("name", 'db/\\"wiki\\"'),) in metrics["drtool_status"]
    stdout = repo_env.run("metrics")
    assert "# TYPE drtool_rpo_seconds gauge" in stdout.out


def test_metrics_when_repository_is_unreadable(dr: DrEnv, tmp_path: Path) -> None:
    out = tmp_path / "drtool.prom"
    result = dr.run("metrics", "--textfile", str(out))
    assert result.code != 0 and "drtool_repository_up 0" in result.err
    assert parse_metrics(out.read_text())["drtool_repository_up"][()] == 0


# ----- notifications and logs ----------------------------------------------------------------------
class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append({"body": json.loads(body), "type": self.headers["Content-Type"]})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def test_notify_failure_runs_command_and_posts_webhook(tmp_path: Path) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "notified.json"
        data = {"on_failure": {"command": f"cat > {out}; echo $DRTOOL_EXIT_CODE >> {out}.code",
                               "webhook": f"http://127.0.0.1:{server.server_port}/hook"}}
        problems = notify.notify_failure(data, "backup", "disk full", 1, host="db1")
    finally:
        server.shutdown()
    assert problems == []
    body = json.loads(out.read_text())
    assert body["command"] == "backup" and body["error"] == "disk full" and body["host"] == "db1"
    assert Path(f"{out}.code").read_text().strip() == "1"
    assert _Hook.received[-1]["body"]["exit_code"] == 1  # type: ignore[index]
    assert _Hook.received[-1]["type"] == "application/json"


def test_notify_failure_never_raises(tmp_path: Path) -> None:
    data = {"on_failure": {"command": "exit 7", "webhook": "http://127.0.0.1:9/unreachable",
                           "timeout": 2}}
    problems = notify.notify_failure(data, "backup", "boom", 1)
    assert len(problems) == 2 and "status 7" in problems[0]
    assert notify.notify_failure({}, "backup", "boom", 1) == []
    assert notify.notify_failure({"on_failure": "yes"}, "backup", "boom", 1)


def test_backup_summary_is_one_json_line(repo_env: DrEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"y" * 1000)
    with repo_env.session() as session:
        result = backup_paths(session, [str(src)], "files")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("drtool.test-summary")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    notify.log_backup_summary(result, logger)
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "info" and record["event"] == "backup"
    assert record["snapshot"] == result.snapshot.id and record["size"] == 1000


# ----- scripts/drtool-nightly ---------------------------------------------------------------------
NIGHTLY = Path(__file__).resolve().parent.parent / "scripts" / "drtool-nightly"


def run_nightly(tmp: Path, today: str, fail: dict[str, int] | None = None,
                *args: str, epoch_day: int = 20429, check_parts: str | None = None) -> tuple[int, list[str]]:
    """Run the wrapper against a fake drtool that records its arguments (night ``epoch_day``:
    20429 % 30 = 29, so ``check_parts="30"`` reads part 30/30)."""
    import os
    import subprocess
    calls = tmp / "calls"
    fake = tmp / "fake-drtool"
    cases = "".join(f'  *" {cmd} "*) exit {code} ;;\n' for cmd, code in (fail or {}).items())
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\ncase " $* " in\n{cases}esac\nexit 0\n')
    fake.chmod(0o755)
    env = dict(os.environ, DRTOOL=str(fake), DRTOOL_TODAY=today, DRTOOL_EPOCH_DAY=str(epoch_day),
               DRTOOL_METRICS_TEXTFILE=str(tmp / "m.prom"))
    env.pop("DRTOOL_CHECK_PARTS", None)
    if check_parts is not None:
        env["DRTOOL_CHECK_PARTS"] = check_parts
    proc = subprocess.run(["bash", str(NIGHTLY), *args], env=env, capture_output=True, text=True)
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return proc.returncode, [line.split("--lock-wait 2h ", 1)[1] for line in lines]


def test_nightly_wrapper_schedule_and_exit_codes(tmp_path: Path) -> None:
    metrics = f"metrics --textfile {tmp_path / 'm.prom'}"
    check = "check --read-data-subset 30/30"
    assert run_nightly(tmp_path, "3") == (0, ["backup --all", metrics])  # no data check unless asked for
    assert run_nightly(tmp_path, "7") == (0, ["backup --all", "forget --prune", metrics])
    assert run_nightly(tmp_path, "3", None, "--prune-days", "1,3") == \
        (0, ["backup --all", "forget --prune", metrics])
    # a failed backup: no forget/prune, the data still checked, metrics still written, exit with the backup's code
    assert run_nightly(tmp_path, "7", {"backup": 11}, check_parts="30") == (11, ["backup --all", check, metrics])
    # partial backup (3) still prunes; a failing prune makes the run fail
    assert run_nightly(tmp_path, "7", {"backup": 3, "forget": 1}, check_parts="30") == \
        (3, ["backup --all", "forget --prune", check, metrics])
    assert run_nightly(tmp_path, "7", {"metrics": 1}, "--textfile", "")[0] == 0
    # damage found by the check fails the night, after metrics were written
    assert run_nightly(tmp_path, "3", {"check": 1}, check_parts="30") == (1, ["backup --all", check, metrics])


def test_nightly_check_reads_every_part_once_over_its_nights(tmp_path: Path) -> None:
    """T consecutive nights name parts 1..T of T, each once: every pack read once per cycle."""
    parts = []
    for night in range(20000, 20007):
        code, calls = run_nightly(tmp_path, "3", None, "--prune-days", "never", epoch_day=night, check_parts="7")
        assert code == 0
        (check,) = [c for c in calls if c.startswith("check ")]
        parts.append(check.removeprefix("check --read-data-subset "))
    assert sorted(parts) == [f"{n}/7" for n in range(1, 8)]
    assert run_nightly(tmp_path, "3", None, "--check-parts", "never", check_parts="7")[1] == [
        "backup --all", f"metrics --textfile {tmp_path / 'm.prom'}"]
    assert run_nightly(tmp_path, "3", None, "--check-parts", "5", epoch_day=20002)[1][1] == \
        "check --read-data-subset 3/5"
    for bad in ("0", "x", "-3"):
        code, calls = run_nightly(tmp_path, "3", check_parts=bad)
        assert code == 2 and calls == []  # refused before anything ran
