"""Broken incremental chains against a real throwaway MariaDB server: window, restore, forget, copy.

Two chains of ``method = "physical"`` nights: full A, incremental A2, then
(``--full``) full B, incremental B2, with rows between them and every binlog
shipped.  Each test breaks a *copy* of that repository the way chains break
(a snapshot lost from the repository; a pack file of a full deleted or its
bytes changed) and checks that nothing treats a member of a broken chain as
restorable: ``drtool check`` reports it, ``drtool mariadb window`` does not
count it, ``restore --point-in-time`` passes over it for an older whole chain
(or names the missing parent or pack in one line), a rehearsal that falls
back records a warning, forget keeps chains whole and ``drtool copy`` never
writes an incremental without its parents.
Tests run in file order (one worker per file).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pymysql
import pytest

from conftest import PASSWORD, DrEnv, make_env
from dbservers import MariaServer, insert_events, mariadb_server, stop_restored_mariadb, write_config
from test_mariadb_incremental import checksums, restored_checksums, settle, touch_pages

SOURCE = "wikichain"


@dataclass
class Scenario:
    dr: DrEnv
    server: MariaServer
    ids: dict[str, str]            # A, A2, B, B2 -> snapshot id
    target: datetime               # after B2, before the last rows
    at_target: list[tuple[Any, ...]]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    dr = make_env(tmp_path_factory.mktemp("mychain"))
    dr.init()
    with mariadb_server() as server:
        config = write_config(dr.tmp / "drtool.toml", str(dr.repo), {SOURCE: server.source(method="physical")})
        dr.env["DRTOOL_CONFIG"] = str(config)
        ids: dict[str, str] = {}

        def night(label: str, *extra: str) -> None:
            result = dr.run("backup", "--source", SOURCE, "--json", *extra)
            assert result.code == 0, result.err
            (made,) = json.loads(result.out)["sources"][SOURCE]
            ids[label] = made["id"]
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        server.sql("CREATE TABLE wiki.pages (id INT PRIMARY KEY, n INT, body VARCHAR(400))")
        server.sql("INSERT INTO pages SELECT seq, 0, REPEAT(SHA2(seq, 256), 6) FROM seq_1_to_8000", "wiki")
        insert_events(server, "a", 5)
        settle(server)
        night("A")
        touch_pages(server, 0)
        insert_events(server, "a2", 6)
        night("A2")
        touch_pages(server, 1)
        insert_events(server, "b", 7)
        night("B", "--full")
        touch_pages(server, 2)
        insert_events(server, "b2", 8)
        night("B2")
        insert_events(server, "t", 9)
        server.sql("FLUSH BINARY LOGS")
        time.sleep(1.1)
        target, at_target = datetime.now(timezone.utc), checksums(server)
        time.sleep(1.1)
        touch_pages(server, 3)
        insert_events(server, "late", 10)
        server.sql("FLUSH BINARY LOGS")
        pushed = dr.run("mariadb", "binlog-push", "--source", SOURCE)
        assert pushed.code == 0, pushed.err
        yield Scenario(dr, server, ids, target, at_target)


def broken_copy(scenario: Scenario, tmp: Path, *lost: str) -> dict[str, str]:
    """A copy of the repository without the snapshots ``lost`` (labels), and the env that uses it."""
    copy = tmp / "repo"
    shutil.copytree(scenario.dr.repo, copy)
    for label in lost:
        os.unlink(copy / "snapshots" / scenario.ids[label])
    return {"DRTOOL_REPOSITORY": str(copy), "DRTOOL_CATALOG": str(tmp / "catalog.sqlite")}


def events(socket: str, password: str) -> list[tuple[Any, ...]]:
    conn = pymysql.connect(unix_socket=socket, user="root", password=password)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tag, count(*) FROM wiki.events GROUP BY tag ORDER BY min(id)")
            return list(cur.fetchall())
    finally:
        conn.close()


def restore_started(scenario: Scenario, target: Path, env: dict[str, str]) -> Any:
    """``restore --source`` to the scenario's target time into ``target``, the server started."""
    return scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.target.isoformat(),
                           "--target", str(target), "--start", "--json", env=env)


def test_the_chains_as_taken(scenario: Scenario) -> None:
    snaps = {s["id"]: s["meta"] for s in json.loads(scenario.dr.run("snapshots", "--name", SOURCE, "--json").out)}
    ids = scenario.ids
    assert snaps[ids["A2"]]["incremental_parent"] == ids["A"] and snaps[ids["B2"]]["incremental_parent"] == ids["B"]
    assert snaps[ids["B"]]["backup_type"] == "full"
    window = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json").out)
    assert window["bases"] == 4 and window["broken_bases"] == [] and len(window["intervals"]) == 1
    assert "broken chain" not in scenario.dr.run("status", "--source", SOURCE).out
    check = scenario.dr.run("check", "--json")
    assert check.code == 0, check.err
    assert json.loads(check.out)["broken_chains"] == []


def test_window_does_not_count_an_incremental_whose_full_is_lost(scenario: Scenario, tmp_path: Path) -> None:
    env = broken_copy(scenario, tmp_path, "B")
    result = scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json", env=env)
    assert result.code == 0, result.err
    window = json.loads(result.out)
    assert window["bases"] == 2  # A and A2; B2 has no full
    (broken,) = window["broken_bases"]
    assert broken["snapshot"] == scenario.ids["B2"]
    assert f"needs snapshot {scenario.ids['B'][:8]} (parent of {scenario.ids['B2'][:8]})" in broken["problem"]
    text = scenario.dr.run("mariadb", "window", "--source", SOURCE, env=env).out
    assert "2 base(s)" in text and f"not a usable base: snapshot {scenario.ids['B2'][:8]}" in text
    assert f"--source {SOURCE} --full" in text
    status = scenario.dr.run("status", "--source", SOURCE, env=env)
    assert status.code == 1, status.out + status.err  # WARNING
    assert f"1 incremental backup(s) with a broken chain, the newest {scenario.ids['B2'][:8]} " \
           f"({scenario.ids['B'][:8]} is missing)" in status.out


def test_window_with_every_chain_broken_is_empty(scenario: Scenario, tmp_path: Path) -> None:
    env = broken_copy(scenario, tmp_path, "A", "B")
    window = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json", env=env).out)
    assert window["bases"] == 0 and window["intervals"] == [] and window["start"] is None
    assert {b["snapshot"] for b in window["broken_bases"]} == {scenario.ids["A2"], scenario.ids["B2"]}


def test_restore_passes_over_a_broken_chain_for_an_older_whole_one(scenario: Scenario, tmp_path: Path) -> None:
    """B is lost: the target after B2 is reached from A2 (chain A, A2) and the binlogs since."""
    env = broken_copy(scenario, tmp_path, "B")
    target = Path(scenario.server.root) / "fallback"
    try:
        result = restore_started(scenario, target, env)
        assert result.code == 0, result.err
        report = json.loads(result.out)
        assert report["plan"]["base"]["snapshot"] == scenario.ids["A2"]
        assert report["plan"]["chain"] == [scenario.ids["A"], scenario.ids["A2"]]
        assert [b["snapshot"] for b in report["plan"]["passed_over"]] == [scenario.ids["B2"]]
        (warning,) = [x for x in result.err.splitlines() if "passed over" in x]
        b, b2, a, a2 = (scenario.ids[k][:8] for k in ("B", "B2", "A", "A2"))
        assert f"passed over snapshot {b2} (incremental, " in warning
        assert f"of source {SOURCE}: snapshot {b} (parent of {b2}) is not in the repository; restoring the older " \
               f"chain {a} (full, " in warning and f"+ 1 incremental(s) {a2} (the last " in warning
        assert restored_checksums(report["socket"], scenario.server.password) == scenario.at_target
        assert events(report["socket"], scenario.server.password) == [("a", 5), ("a2", 6), ("b", 7), ("b2", 8),
                                                                       ("t", 9)]
    finally:
        stop_restored_mariadb(target)


def test_restore_names_the_missing_parent_when_no_whole_chain_serves(scenario: Scenario, tmp_path: Path) -> None:
    env = broken_copy(scenario, tmp_path, "A", "B")
    target = tmp_path / "never"
    result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.target.isoformat(),
                             "--target", str(target), env=env)
    assert result.code == 1, result.err
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    assert f"snapshot {b2} of source {SOURCE} is an incremental physical backup whose chain needs snapshot {b} " \
           f"(parent of {b2}), which is not in the repository, and no older base with a whole chain" in result.err
    assert f"drtool backup --source {SOURCE} --full" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert not target.exists()
    named = scenario.dr.run("restore", b2, "--source", SOURCE, "--target", str(target), env=env)
    assert named.code == 1 and f"needs snapshot {b} (parent of {b2})" in named.err and not target.exists()


def test_forget_keeps_whole_chains(scenario: Scenario, tmp_path: Path) -> None:
    """--keep-last 1 keeps B2 and its full B, drops chain A whole; forget B alone is refused."""
    env = broken_copy(scenario, tmp_path)
    ids = scenario.ids
    result = scenario.dr.run("forget", "--name", SOURCE, "--keep-last", "1", "--json", env=env)
    assert result.code == 0, result.err
    (series,) = json.loads(result.out)["series"]
    assert {k["id"] for k in series["keep"]} == {ids["B"], ids["B2"]}
    assert set(series["removed"]) == {ids["A"], ids["A2"]}
    refused = scenario.dr.run("forget", ids["B"][:8], env=env)
    assert refused.code == 2 and f"restore chain of incremental backup(s) {ids['B2'][:8]}" in refused.err
    window = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json", env=env).out)
    assert window["bases"] == 2 and window["broken_bases"] == []


def test_copying_an_incremental_copies_its_parents(scenario: Scenario, tmp_path: Path) -> None:
    second = {"DRTOOL_REPOSITORY": str(tmp_path / "second"), "DRTOOL_CATALOG": str(tmp_path / "second.sqlite")}
    result = scenario.dr.run("copy", scenario.ids["A2"][:12], "--to", str(tmp_path / "second"), "--json")
    assert result.code == 0, result.err
    report = json.loads(result.out)
    assert [c["source"] for c in report["copied"]] == [scenario.ids["A"], scenario.ids["A2"]]
    assert [c["source"] for c in report["chain_parents"]] == [scenario.ids["A"]]
    window = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json", env=second).out)
    assert window["bases"] == 2 and window["broken_bases"] == []
    target = Path(scenario.server.root) / "copied-a2"
    try:
        restored = scenario.dr.run("restore", report["copied"][1]["id"][:12], "--source", SOURCE, "--target",
                                   str(target), "--start", "--json", env=second)
        assert restored.code == 0, restored.err
        socket = json.loads(restored.out)["socket"]
        assert events(socket, scenario.server.password) == [("a", 5), ("a2", 6)]
    finally:
        stop_restored_mariadb(target)


def test_copy_refuses_an_incremental_whose_chain_is_in_neither_repository(scenario: Scenario,
                                                                          tmp_path: Path) -> None:
    env = broken_copy(scenario, tmp_path, "B")
    third = tmp_path / "third"
    third_env = {"DRTOOL_REPOSITORY": str(third), "DRTOOL_CATALOG": str(tmp_path / "third.sqlite")}
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    named = scenario.dr.run("copy", b2, "--to", str(third), env=env)
    assert named.code == 1, named.err
    assert f"snapshot {b2} of {SOURCE} is an incremental physical backup whose chain needs snapshot {b} " \
           f"(parent of {b2}), which is in neither repository" in named.err and "nothing was copied" in named.err
    assert "Traceback" not in named.err and len(named.err.strip().splitlines()) == 1
    listed = scenario.dr.run("snapshots", "--json", env=third_env)
    assert listed.code != 0 or json.loads(listed.out) == []
    everything = scenario.dr.run("copy", "--to", str(third), "--name", SOURCE, "--json", env=env)
    assert everything.code == 3, everything.err
    report = json.loads(everything.out)
    assert [c["source"] for c in report["copied"]] == [scenario.ids["A"], scenario.ids["A2"]]
    assert [r["source"] for r in report["refused"]] == [scenario.ids["B2"]]
    assert f"drtool forget {b2}" in everything.err
    copied = json.loads(scenario.dr.run("snapshots", "--json", env=third_env).out)
    assert sorted(s["meta"]["copied_from"]["snapshot"] for s in copied) == sorted([scenario.ids["A"],
                                                                                 scenario.ids["A2"]])


def test_a_lost_parent_comes_back_from_the_second_repository(scenario: Scenario, tmp_path: Path) -> None:
    """The runbook's repair: B is lost here but copied to a second site; copying B2's copy back
    brings B with it (B2 itself is already here), and the chain is whole again."""
    second = tmp_path / "second"
    second_env = {"DRTOOL_REPOSITORY": str(second), "DRTOOL_CATALOG": str(tmp_path / "second.sqlite")}
    assert scenario.dr.run("copy", "--to", str(second), "--name", SOURCE).code == 0
    env = broken_copy(scenario, tmp_path, "B")
    copies = {s["meta"]["copied_from"]["snapshot"]: s["id"]
              for s in json.loads(scenario.dr.run("snapshots", "--json", env=second_env).out)}
    back = scenario.dr.run("copy", copies[scenario.ids["B2"]][:12], "--to", env["DRTOOL_REPOSITORY"], "--json",
                           env=second_env)
    assert back.code == 0, back.err
    report = json.loads(back.out)
    assert [c["source"] for c in report["copied"]] == [copies[scenario.ids["B"]]]
    assert [s["source"] for s in report["skipped"]] == [copies[scenario.ids["B2"]]]
    window = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json", env=env).out)
    assert window["bases"] == 4 and window["broken_bases"] == []
    plan = json.loads(scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", "/nonexistent",
                                      "--dry-run", "--json", env=env).out)
    assert plan["base"]["snapshot"] == scenario.ids["B2"] and plan["passed_over"] == []


def test_a_damaged_manifest_breaks_the_chain_like_a_lost_one(scenario: Scenario, tmp_path: Path) -> None:
    """B's manifest cannot be read (bytes overwritten): listings skip it with a warning, so B2 is no
    base and the restore to the target passes over it, as when B is lost."""
    env = broken_copy(scenario, tmp_path)
    manifest = Path(env["DRTOOL_REPOSITORY"]) / "snapshots" / scenario.ids["B"]
    body = bytearray(manifest.read_bytes())
    body[len(body) // 2] ^= 0xFF
    manifest.write_bytes(bytes(body))
    result = scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json", env=env)
    assert result.code == 0, result.err
    assert scenario.ids["B"][:8] in result.err and "drtool check" in result.err  # the skipped manifest
    window = json.loads(result.out)
    assert window["bases"] == 2 and [b["snapshot"] for b in window["broken_bases"]] == [scenario.ids["B2"]]
    plan = json.loads(scenario.dr.run("restore", "--source", SOURCE, "--point-in-time",
                                      scenario.target.isoformat(), "--target", "/nonexistent", "--dry-run",
                                      "--json", env=env).out)
    assert plan["base"]["snapshot"] == scenario.ids["A2"]
    assert [b["snapshot"] for b in plan["passed_over"]] == [scenario.ids["B2"]]
    check = scenario.dr.run("check", "--json", env=env)
    assert check.code == 1
    (broken,) = json.loads(check.out)["broken_chains"]
    assert broken["snapshot"] == scenario.ids["B2"] and "whose manifest cannot be read" in broken["problem"]


# ----- check, and damaged packs of a chain's full -------------------------------------------------
def own_packs(scenario: Scenario, env: dict[str, str], label: str) -> list[Path]:
    """The pack files of snapshot ``label``'s stream that no snapshot of the other chain reads (its own
    incremental may share one: the nightly non-InnoDB files are the same bytes)."""
    from drtool import api
    from drtool.repository.objects import pack_name
    from drtool.snapshot.store import stream_ids
    repo = Path(env["DRTOOL_REPOSITORY"])
    with api.open_repository(str(repo), PASSWORD.encode(), catalog=str(repo.parent / "look.sqlite")) as session:
        session.repo.load_index()
        packs = {s.id: {session.repo.locate(b).pack_id for b in stream_ids(session.repo, s)}
                 for s in session.snapshots(SOURCE)}
    other = ("A", "A2") if label.startswith("B") else ("B", "B2")
    mine = packs[scenario.ids[label]].difference(*(packs[scenario.ids[o]] for o in other))
    assert mine, f"snapshot {label} has packs the other chain does not read"
    return [repo / pack_name(p) for p in sorted(mine)]


def test_check_reports_an_incremental_whose_parent_is_lost(scenario: Scenario, tmp_path: Path) -> None:
    env = broken_copy(scenario, tmp_path, "B")
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    result = scenario.dr.run("check", "--json", env=env)
    assert result.code == 1, result.err
    report = json.loads(result.out)
    (broken,) = report["broken_chains"]
    assert broken["snapshot"] == scenario.ids["B2"] and broken["member"] == scenario.ids["B"]
    assert broken["problem"] in report["errors"]
    text = scenario.dr.run("check", env=env)
    assert text.code == 1 and "Traceback" not in text.err
    (line,) = [x for x in text.out.splitlines() if f"snapshot {b2} " in x]
    assert f"cannot be restored: its chain needs snapshot {b} (parent of {b2}), which is not in the repository" \
           in line and f"drtool backup --source {SOURCE} --full" in line and f"drtool forget {b2}" in line


def test_a_lost_pack_of_the_full_is_found_before_extracting_and_an_older_chain_serves(
        scenario: Scenario, tmp_path: Path) -> None:
    """A pack full B reads (chain A does not) is deleted: check names B2 as taken down with B, and the restore to
    the target after B2 finds the loss by stat before it extracts anything, then restores chain A, A2."""
    env = broken_copy(scenario, tmp_path)
    lost = own_packs(scenario, env, "B")[0]
    os.unlink(lost)
    name = f"packs/{lost.parent.name}/{lost.name}"
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    check = scenario.dr.run("check", "--json", env=env)  # plain: the listing, no pack read
    assert check.code == 1, check.err
    report = json.loads(check.out)
    assert report["packs_read"] == 0
    (line,) = [e for e in report["errors"] if name in e]  # the pack once, with what depends on it
    assert line.startswith(f"pack {name} is missing; needed by snapshot(s) {b} (")
    assert line.count(f"{b2} ({SOURCE} ") == 1  # B2 needs the pack itself, or through its full: named once
    (problem,) = [p for p in report["problems"] if p["object"] == name]
    assert scenario.ids["B"] in problem["snapshots"] and scenario.ids["B2"] in problem["snapshots"] + problem["chains"]
    plan = json.loads(scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.target.isoformat(),
                                      "--target", "/nonexistent", "--dry-run", "--json", env=env).out)
    assert [p["snapshot"] for p in plan["passed_over"]] == [scenario.ids["B"], scenario.ids["B2"]]  # the cache
    assert plan["chain"] == [scenario.ids["A"], scenario.ids["A2"]]  # still names the pack: not trusted
    (broken,) = report["broken_chains"]
    assert broken["snapshot"] == scenario.ids["B2"] and broken["damage"] == f"pack {name}"
    assert f"its chain needs snapshot {b} (the full of its chain), which is affected by damaged data " \
           f"(pack {name})" in broken["problem"]
    target = Path(scenario.server.root) / "pack-fallback"
    try:
        result = restore_started(scenario, target, env)
        assert result.code == 0, result.err
        restored = json.loads(result.out)
        assert restored["plan"]["chain"] == [scenario.ids["A"], scenario.ids["A2"]]
        passed = restored["plan"]["passed_over"]  # the full B is a base too
        assert [p["snapshot"] for p in passed] == [scenario.ids["B"], scenario.ids["B2"]]
        assert all(name in p["problem"] for p in passed)
        (warning,) = [x for x in result.err.splitlines() if "passed over" in x]  # once for B and B2
        a, a2 = scenario.ids["A"][:8], scenario.ids["A2"][:8]
        assert f"passed over snapshots {b} (full, " in warning and f"+ 1 incremental(s) {b2} (the last " in warning
        assert f"of source {SOURCE}: full {b} needs data that is not in the repository (pack {name} is missing " \
               f"from the repository); restoring the older chain {a} (full, " in warning
        assert f"+ 1 incremental(s) {a2} (the last " in warning and warning.endswith(") instead")
        assert restored["plan"]["fallback"] == [warning.split("WARNING: ", 1)[1]]
        assert restored_checksums(restored["socket"], scenario.server.password) == scenario.at_target
    finally:
        stop_restored_mariadb(target)


def test_a_lost_pack_with_no_older_chain_stops_before_writing(scenario: Scenario, tmp_path: Path) -> None:
    env = broken_copy(scenario, tmp_path)
    lost = own_packs(scenario, env, "B")[0]
    os.unlink(lost)
    os.unlink(Path(env["DRTOOL_REPOSITORY"]) / "snapshots" / scenario.ids["A"])  # chain A broken: nothing serves
    target = tmp_path / "never"
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    for args in (("--point-in-time", scenario.target.isoformat()), ("--latest",), (b2,)):
        result = scenario.dr.run("restore", *args, "--source", SOURCE, "--target", str(target), env=env)
        assert result.code == 1, result.err
        assert f"snapshot {b2} of source {SOURCE} cannot be restored: snapshot {b} of its chain (the full) needs " \
               f"data that is not in the repository (pack packs/{lost.parent.name}/{lost.name} is missing" \
               in result.err and f"drtool backup --source {SOURCE} --full" in result.err
        assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
        assert not target.exists()


def test_a_corrupt_pack_of_the_full_is_named_and_leaves_nothing(scenario: Scenario, tmp_path: Path) -> None:
    """Bytes of a pack full B reads (chain A does not) changed (same size): check --read-data attributes it to B2's
    chain; the restore finds it while extracting B, in one line naming B and the pack, and removes the
    target it created."""
    env = broken_copy(scenario, tmp_path)
    rotten = own_packs(scenario, env, "B")[0]
    body = bytearray(rotten.read_bytes())
    body[len(body) // 2:len(body) // 2 + 64] = bytes(64)
    rotten.write_bytes(bytes(body))
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    assert json.loads(scenario.dr.run("check", "--json", env=env).out)["broken_chains"] == []  # metadata is fine
    check = scenario.dr.run("check", "--read-data", "--json", env=env)
    assert check.code == 1, check.err
    (broken,) = json.loads(check.out)["broken_chains"]
    assert broken["snapshot"] == scenario.ids["B2"] and broken["member"] == scenario.ids["B"]
    assert broken["damage"] == f"pack packs/{rotten.parent.name}/{rotten.name}"
    target = tmp_path / "restored"
    result = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.target.isoformat(),
                             "--target", str(target), env=env)
    assert result.code == 1, result.err
    assert f"snapshot {b} of the restore chain cannot be read: pack {rotten.name[:16]} is damaged" in result.err
    assert f"drtool backup --source {SOURCE} --full" in result.err
    assert "Traceback" not in result.err and len(result.err.strip().splitlines()) == 1
    assert not target.exists()


def test_a_rehearsal_that_falls_back_records_a_warning(scenario: Scenario, tmp_path: Path) -> None:
    """Full B is lost: the drill passes from chain A, A2, and says so in its summary, its JSON, the
    catalog's history and the record in the repository.  (Not a lost pack of B: the drill first
    restores the chosen snapshot's own file, B2's, which may share that pack.)"""
    env = broken_copy(scenario, tmp_path, "B")
    root = tmp_path / "sandboxes"
    root.mkdir()
    runbook = tmp_path / "chain.toml"
    runbook.write_text(f'''source = "{SOURCE}"
point_in_time = "{scenario.target.isoformat()}"
sandbox = {{ type = "mariadb", database = "wiki", path = "{root}" }}
[[validations]]
type = "sql"
query = "SELECT COUNT(*) FROM events"
expect = 35
''')
    b2, a2 = scenario.ids["B2"][:8], scenario.ids["A2"][:8]
    result = scenario.dr.run("rehearse", str(runbook), env=env)
    assert result.code == 0, result.out + result.err
    (summary,) = [x for x in result.out.splitlines() if x.startswith("  warning: ")]
    assert f"passed over snapshot {b2} (incremental, " in summary and f"+ 1 incremental(s) {a2} (the last " in summary
    assert summary.endswith(") instead")
    assert list(root.iterdir()) == []
    (doc,) = json.loads(scenario.dr.run("rehearsals", "--json", env=env).out)
    (step,) = doc["steps"]
    assert doc["status"] == "passed" and doc["warnings"] == [summary[len("  warning: "):]]
    assert [f"step {step['name']!r}: {w}" for w in step["warnings"]] == doc["warnings"]
    assert step["snapshot"] == scenario.ids["B2"]
    assert "warning: " in scenario.dr.run("rehearsals", env=env).out
    status = scenario.dr.run("status", "--source", SOURCE, "--json", env=env)
    assert status.code == 1, status.out + status.err  # WARNING (the broken chain, and the drill's fallback)
    (mine,) = [s for s in json.loads(status.out)["sources"] if s["name"] == SOURCE]
    assert mine["rehearsal"]["success"] is True and mine["rehearsal"]["warnings"] == step["warnings"]
    assert f"last rehearsal passed with a warning ({mine['rehearsal']['time']}): {step['warnings'][0]}" \
        in mine["messages"]
    fresh = dict(env, DRTOOL_CATALOG=str(tmp_path / "fresh.sqlite"))  # history from the repository's record
    (again,) = json.loads(scenario.dr.run("rehearsals", "--json", env=fresh).out)
    assert again["warnings"] == doc["warnings"]
    html = tmp_path / "report.html"
    assert scenario.dr.run("report", "--html", str(html), env=env).code == 0
    assert f"passed over snapshot {b2} (incremental, " in html.read_text()


def test_a_read_only_repository_restores_a_chain_without_a_lock(scenario: Scenario, tmp_path: Path) -> None:
    """A DR site mounts its copy read-only (or holds a restore-only S3 role): a database restore,
    like a file restore, runs without a lock and says so, instead of failing to write one."""
    if os.geteuid() != 0:
        pytest.fail("the read-only repository test needs root for a bind mount (CI runs as root)")
    env = broken_copy(scenario, tmp_path)
    mount = tmp_path / "ro-repo"
    mount.mkdir()
    subprocess.run(["mount", "--bind", env["DRTOOL_REPOSITORY"], str(mount)], check=True)
    target = Path(scenario.server.root) / "from-read-only"
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        env["DRTOOL_REPOSITORY"] = str(mount)
        result = restore_started(scenario, target, env)
        assert result.code == 0, result.err
        assert "the repository is read-only here" in result.err and "runs without a lock" in result.err
        report = json.loads(result.out)
        assert report["plan"]["chain"] == [scenario.ids["B"], scenario.ids["B2"]]
        assert restored_checksums(report["socket"], scenario.server.password) == scenario.at_target
    finally:
        stop_restored_mariadb(target)
        subprocess.run(["umount", "-l", str(mount)], check=False)


# ----- the window sees lost packs; check names each pack once; a dry run stays cheap ---------------------
def test_window_does_not_count_a_chain_whose_full_lost_a_pack(scenario: Scenario, tmp_path: Path) -> None:
    """A pack only full B reads is deleted: B and B2 are no bases (the same presence check as the restore's),
    and the window stays whole, since A2 and the binlogs since reach every time B2 would have."""
    env = broken_copy(scenario, tmp_path)
    lost = own_packs(scenario, env, "B")[0]
    os.unlink(lost)
    name = f"packs/{lost.parent.name}/{lost.name}"
    result = scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json", env=env)
    assert result.code == 0, result.err
    window = json.loads(result.out)
    assert window["bases"] == 2 and len(window["intervals"]) == 1 and window["not_restorable"] == []
    assert [b["snapshot"] for b in window["broken_bases"]] == [scenario.ids["B"], scenario.ids["B2"]]
    assert all(f"pack {name} is missing from the repository" in b["problem"] for b in window["broken_bases"])
    whole = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json").out)
    assert window["start"] == whole["start"] and window["end"] == whole["end"]
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    text = scenario.dr.run("mariadb", "window", "--source", SOURCE, env=env).out
    (line,) = [x for x in text.splitlines() if name in x]  # the chain once, for its one cause
    assert line.startswith(f"not usable bases: snapshots {b} (full, ") and f"+ 1 incremental(s) {b2} (the last " \
        in line and f"of source {SOURCE}: full {b} needs data that is not in the repository (pack {name} is " \
        f"missing from the repository)" in line and f"drtool backup --source {SOURCE} --full" in line


def test_window_says_why_a_range_is_not_restorable(scenario: Scenario, tmp_path: Path) -> None:
    """A pack that full A and full B both read is deleted (B deduplicates against A: no pack is A's alone):
    every chain lacks it, nothing can be restored, and the window says why for the whole range the
    intact repository covers, naming the four snapshots and the pack."""
    env = broken_copy(scenario, tmp_path)
    lost = shared_pack(scenario, env)
    os.unlink(lost)
    name = f"packs/{lost.parent.name}/{lost.name}"
    window = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json", env=env).out)
    assert window["bases"] == 0 and window["intervals"] == [] and len(window["broken_bases"]) == 4
    whole = json.loads(scenario.dr.run("mariadb", "window", "--source", SOURCE, "--json").out)
    (lost_range,) = window["not_restorable"]
    assert [lost_range["start"], lost_range["end"]] == whole["intervals"][0]
    assert lost_range["snapshots"] == [scenario.ids[k] for k in ("A", "A2", "B", "B2")]
    assert all(f"pack {name} is missing from the repository" in p for p in lost_range["problems"])
    text = scenario.dr.run("mariadb", "window", "--source", SOURCE, env=env)
    assert text.code == 0, text.err
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    (line,) = [x for x in text.out.splitlines() if x.startswith("not restorable: ")]
    assert f"only snapshot(s) {', '.join(scenario.ids[k][:8] for k in ('A', 'A2', 'B', 'B2'))} would reach it, " \
           f"and they are not usable (snapshot {b2} of source {SOURCE} cannot be restored: snapshot {b} of its " \
           f"chain (the full) needs data that is not in the repository (pack {name} is missing from the " \
           f"repository))" in line


def shared_pack(scenario: Scenario, env: dict[str, str]) -> Path:
    """A pack file that both fulls, A and B, read."""
    from drtool import api
    from drtool.repository.objects import pack_name
    from drtool.snapshot.store import stream_ids
    repo = Path(env["DRTOOL_REPOSITORY"])
    with api.open_repository(str(repo), PASSWORD.encode(), catalog=str(repo.parent / "look.sqlite")) as session:
        session.repo.load_index()
        packs = {s.id: {session.repo.locate(b).pack_id for b in stream_ids(session.repo, s)}
                 for s in session.snapshots(SOURCE)}
    both = packs[scenario.ids["A"]] & packs[scenario.ids["B"]]
    assert both, "full B deduplicates against full A"
    return repo / pack_name(sorted(both)[0])


def test_check_names_a_corrupt_pack_once_with_what_depends_on_it(scenario: Scenario, tmp_path: Path) -> None:
    """Bytes of a pack only full B reads changed: its hash and its groups both fail, B needs it and B2 falls with
    B; check --read-data says all of it in one error line (before: four lines naming the pack)."""
    env = broken_copy(scenario, tmp_path)
    rotten = own_packs(scenario, env, "B")[0]
    body = bytearray(rotten.read_bytes())
    body[len(body) // 2:len(body) // 2 + 64] = bytes(64)
    rotten.write_bytes(bytes(body))
    name = f"packs/{rotten.parent.name}/{rotten.name}"
    b, b2 = scenario.ids["B"][:8], scenario.ids["B2"][:8]
    result = scenario.dr.run("check", "--read-data", "--json", env=env)
    assert result.code == 1, result.err
    report = json.loads(result.out)
    assert report["damaged_objects"] == [name]
    (line,) = [e for e in report["errors"] if name in e]
    assert line.count(name) == 1 and len(report["errors"]) == 1
    assert line.startswith(f"pack {name} does not match its name (bytes changed); ")
    assert f"needed by snapshot(s) {b} ({SOURCE} " in line and line.count(f"{b2} ({SOURCE} ") == 1
    assert f"drtool backup --source {SOURCE} --full" in line
    text = scenario.dr.run("check", "--read-data", env=env)
    assert text.code == 1 and "1 error(s) found" in text.out
    assert [x for x in text.out.splitlines() if name in x] == [f"error: {line}"]
    assert f"check found 1 error(s); damaged objects: {name}" in text.err


def test_a_dry_run_reads_no_index_object_when_the_cache_has_the_chain(scenario: Scenario, tmp_path: Path) -> None:
    """The local index cache holds every blob of chain B, B2 and every pack is there (a stat each): the dry run
    plans without reading the repository's index objects.  Shown with an index object that cannot be read: the
    dry run plans B2, while anything that loads the index (here the restore itself) stops on it."""
    env = broken_copy(scenario, tmp_path)
    assert scenario.dr.run("restore", "--source", SOURCE, "--latest", "--target", "/nonexistent", "--dry-run",
                           env=env).code == 0  # the cache is up to date with this repository
    (Path(env["DRTOOL_REPOSITORY"]) / "index" / ("ab" * 32)).write_bytes(b"not an index object")
    plan = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.target.isoformat(),
                           "--target", "/nonexistent", "--dry-run", "--json", env=env)
    assert plan.code == 0, plan.err
    assert json.loads(plan.out)["chain"] == [scenario.ids["B"], scenario.ids["B2"]]
    target = tmp_path / "never"
    restore = scenario.dr.run("restore", "--source", SOURCE, "--point-in-time", scenario.target.isoformat(),
                              "--target", str(target), env=env)
    assert restore.code != 0 and "Traceback" not in restore.err and not target.exists()
