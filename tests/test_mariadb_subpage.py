"""Sub-page MariaDB incrementals against a real throwaway server (issue 19: night 2 ≤ 20 %).

Two physical sources back up the same server at the same moments: ``sub``
(the default, ``subpage = true``) and ``whole`` (``subpage = false``, the
incrementals as mariabackup writes them).  Between nights 1 % of the rows of
``wiki.pages`` are updated, scattered over most of its pages.  The sub-page
incrementals must store a fraction of the whole ones, restore to exactly the
server's contents at each night (CHECKSUM TABLE), survive a lost block map
(whole pages for one night, then blocks again), refuse a wrong base page
loudly, and make a drtool that does not know the form fail ``--prepare``
instead of restoring stale pages.  Tests run in file order and add nights.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pymysql
import pytest

from conftest import PASSWORD, DrEnv, make_env
from drtool.core import stages
from dbservers import MariaServer, maria_binary, mariadb_server, stop_restored_mariadb, write_config
from test_mariadb_incremental import settle

SUB, WHOLE = "sub", "whole"
TABLES = "wiki.pages, wiki.events"


@dataclass
class Nights:
    dr: DrEnv
    server: MariaServer
    made: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {SUB: [], WHOLE: []})
    sums: list[list[tuple[Any, ...]]] = field(default_factory=list)  # CHECKSUM TABLE at each night

    def night(self, *sources: str) -> None:
        """Back up ``sources`` (default both) with no writes in between: each night is one moment."""
        settle(self.server)
        self.sums.append(self.server.sql(f"CHECKSUM TABLE {TABLES}"))
        for name in sources or (SUB, WHOLE):
            result = self.dr.run("backup", "--source", name, "--json")
            assert result.code == 0, result.err
            (made,) = json.loads(result.out)["sources"][name]
            made["night"], made["stderr"] = len(self.sums) - 1, result.err
            self.made[name].append(made)

    def change(self, residue: int) -> None:
        """1 % of the rows, scattered over most pages, and a few new rows."""
        self.server.sql(f"UPDATE wiki.pages SET body = REVERSE(body), n = n + 1 WHERE id % 100 = {residue}")
        self.server.sql(f"INSERT INTO wiki.events (tag, n) SELECT 'r{residue}', seq FROM seq_1_to_50", "wiki")


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nights]:
    dr = make_env(tmp_path_factory.mktemp("subpage"))
    dr.init()
    with mariadb_server() as server:
        config = write_config(dr.tmp / "drtool.toml", str(dr.repo),
                              {SUB: server.source(method="physical"),
                               WHOLE: server.source(method="physical", subpage=False)})
        dr.env["DRTOOL_CONFIG"] = str(config)
        server.sql("CREATE DATABASE wiki")
        server.sql("CREATE TABLE wiki.pages (id INT PRIMARY KEY, n INT, body VARCHAR(400))")
        server.sql("CREATE TABLE wiki.events (id INT AUTO_INCREMENT PRIMARY KEY, tag VARCHAR(8), n INT)")
        server.sql("INSERT INTO pages SELECT seq, 0, REPEAT(SHA2(seq, 256), 6) FROM seq_1_to_40000", "wiki")
        state = Nights(dr, server)
        state.night()                      # night 0: full
        state.change(0)
        state.night()                      # night 1: incremental
        state.change(1)
        state.night()                      # night 2: incremental
        yield state


class StageLog:
    """A :class:`drtool.core.stages.StageWatcher` that keeps what it was told."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, bool, int | None, int, str]] = []
        self.open: list[str] = []

    def begun(self, stage: stages.Stage) -> None:
        self.open.append(stage.text)

    def advanced(self, stage: stages.Stage, nbytes: int) -> None:
        assert stage.text in self.open and nbytes > 0

    def noted(self, stage: stages.Stage, detail: str) -> None:
        assert stage.text in self.open

    def ended_texts(self) -> list[str]:
        return [text for text, *_ in self.finished]

    def ended(self, stage: stages.Stage, ok: bool) -> None:
        self.open.remove(stage.text)
        self.finished.append((stage.text, ok, stage.total_bytes, stage.done_bytes, stage.detail))


def restore_sums(nights: Nights, snapshot_id: str, source: str, name: str,
                 watcher: StageLog | None = None) -> list[tuple[Any, ...]]:
    target = Path(nights.server.root) / name
    try:
        with stages.watching(watcher):
            result = nights.dr.run("-v", "restore", snapshot_id[:12], "--source", source, "--target",
                                   str(target), "--start", "--json")
        assert result.code == 0, result.err
        report = json.loads(result.out)
        conn = pymysql.connect(unix_socket=report["socket"], user="root", password=nights.server.password)
        try:
            with conn.cursor() as cur:
                cur.execute(f"CHECKSUM TABLE {TABLES}")
                return list(cur.fetchall())
        finally:
            conn.close()
    finally:
        stop_restored_mariadb(target)


def test_incrementals_store_the_changed_blocks_of_the_changed_pages(nights: Nights) -> None:
    sub, whole = nights.made[SUB], nights.made[WHOLE]
    assert "subpage" not in sub[0]["meta"] and all("subpage" not in m["meta"] for m in whole)
    for night in (1, 2):
        meta = sub[night]["meta"]
        assert meta["backup_type"] == "incremental" and meta["subpage"]["map_from_parent"] is True
        counts = meta["subpage"]
        # most changed pages of wiki.pages differ from their previous version in a few blocks only
        assert counts["pages_as_blocks"] > 0.8 * counts["pages"] > 100, counts
        assert counts["stored_bytes"] < counts["delta_bytes"] / 2, counts
        # the whole stream: what the sub-page night streamed against the same night stored whole
        assert meta["dump_bytes"] < 0.8 * whole[night]["meta"]["dump_bytes"], (meta, whole[night]["meta"])


def test_every_night_restores_to_the_servers_contents_at_that_night(nights: Nights) -> None:
    watched = StageLog()
    for night in (1, 2):
        made = nights.made[SUB][night]
        restored = restore_sums(nights, made["id"], SUB, f"night{night}", watched if night == 2 else None)
        assert restored == nights.sums[night], f"night {night} restored differently"
    assert nights.sums[1] != nights.sums[2]  # the nights differ, so a stale page would show
    # the chain's restore told its stages in order, each extraction's bytes the stored stream's length
    full, first, second = (nights.made[SUB][n] for n in (0, 1, 2))
    ids = [m["id"][:8] for m in (full, first, second)]
    assert watched.ended_texts() == [
        f"extracting the full {ids[0]} (1 of 3)", f"extracting incremental {ids[1]} (2 of 3)",
        f"extracting incremental {ids[2]} (3 of 3)", "rebuilding the changed pages of 2 incremental(s)",
        f"preparing the full {ids[0]} (mariabackup --prepare)",
        f"applying incremental {ids[1]} (2 of 3) (mariabackup --prepare)",
        f"applying incremental {ids[2]} (3 of 3) (mariabackup --prepare)",
        "syncing the restored files to disk"], watched.finished
    assert all(ok for _, ok, *_ in watched.finished) and not watched.open
    for (_, _, total, done, _), made in zip(watched.finished, (full, first, second)):
        assert total == done == made["meta"]["dump_bytes"], (total, done, made["meta"]["dump_bytes"])
    rebuilt = int(watched.finished[3][4].split()[0])
    assert rebuilt >= first["meta"]["subpage"]["pages_as_blocks"] + second["meta"]["subpage"]["pages_as_blocks"]


def test_a_lost_block_map_costs_one_night_of_whole_pages(nights: Nights) -> None:
    maps = list(Path(nights.dr.env["XDG_CACHE_HOME"]).glob("drtool/*/blockmap/*"))
    assert len(maps) == 1  # the sub source's; subpage = false keeps none
    for directory in maps:
        shutil.rmtree(directory)
    nights.change(2)
    nights.night(SUB)
    lost = nights.made[SUB][-1]
    assert "no block map of snapshot" in lost["stderr"] and "whole" in lost["stderr"]
    assert lost["meta"]["subpage"]["map_from_parent"] is False
    assert lost["meta"]["subpage"]["pages_as_blocks"] == 0
    nights.change(3)
    nights.night(SUB)
    again = nights.made[SUB][-1]["meta"]["subpage"]
    assert again["map_from_parent"] is True and again["pages_as_blocks"] > 0.8 * again["pages"]
    # the map restarted from the whole night: its pages are the bases of the next night's blocks
    restored = restore_sums(nights, nights.made[SUB][-1]["id"], SUB, "aftermap")
    assert restored == nights.sums[-1]


def _extract(nights: Nights, snapshot_ids: list[str], root: Path) -> list[Path]:
    """The stored streams of a chain, extracted as they are stored (no rebuilding)."""
    from drtool import api
    from drtool.snapshot.streamread import read_stream
    dirs = []
    with api.open_repository(str(nights.dr.repo), PASSWORD.encode(), catalog=str(nights.dr.catalog)) as session:
        session.repo.load_index()
        for n, snapshot_id in enumerate(snapshot_ids):
            (snap,) = [s for s in session.snapshots(SUB) if s.id == snapshot_id]
            target = root / f"m{n}"
            target.mkdir(parents=True)
            proc = subprocess.Popen([maria_binary("mbstream"), "-x", "-C", str(target)], stdin=subprocess.PIPE)
            assert proc.stdin is not None
            for piece in read_stream(session.repo, snap):
                proc.stdin.write(piece)
            proc.stdin.close()
            assert proc.wait() == 0
            dirs.append(target)
    return dirs


def test_a_wrong_base_page_fails_the_rebuild_loudly(nights: Nights, tmp_path: Path) -> None:
    from drtool.databases.subpage_restore import rebuild_chain
    from drtool.errors import RestoreTargetError
    full, inc = _extract(nights, [nights.made[SUB][0]["id"], nights.made[SUB][1]["id"]], tmp_path)
    pages = full / "wiki" / "pages.ibd"
    data = bytearray(pages.read_bytes())
    data[16384 * 10 + 5000:16384 * 10 + 5010] = b"\xff" * 10  # a block the night did not change
    pages.write_bytes(bytes(data))
    with pytest.raises(RestoreTargetError) as caught:
        rebuild_chain(str(full), [str(inc)])
    assert "does not match the digest stored at backup time" in str(caught.value)
    assert "wiki/pages.ibd" in str(caught.value)


def test_a_drtool_without_the_form_fails_prepare_instead_of_restoring_stale_pages(nights: Nights,
                                                                                   tmp_path: Path) -> None:
    full, inc = _extract(nights, [nights.made[SUB][0]["id"], nights.made[SUB][1]["id"]], tmp_path)
    assert list(inc.rglob("*.delta.drtool-subpage")) and not list(inc.rglob("pages.ibd.delta"))
    prepare = [maria_binary("mariabackup"), "--no-defaults", "--prepare", f"--target-dir={full}"]
    assert subprocess.run(prepare, capture_output=True, check=False).returncode == 0
    applied = subprocess.run(prepare + [f"--incremental-dir={inc}"], capture_output=True, text=True, check=False)
    assert applied.returncode != 0, "an old drtool's prepare would have applied an incremental without its pages"


def test_rebuilt_delta_files_are_what_mariabackup_wrote(nights: Nights, tmp_path: Path) -> None:
    """The same night stored whole by the other source is not the same night (two backups), so the
    check is structural: every rebuilt .delta parses, names the pages its sub-page file named, and
    the rebuilt chain prepares."""
    from drtool.databases import innodb_delta
    from drtool.databases.subpage_restore import rebuild_chain
    ids = [m["id"] for m in nights.made[SUB][:3]]
    full, *incs = _extract(nights, ids, tmp_path)
    subpage_files = {inc: sorted(p.relative_to(inc) for p in inc.rglob("*.delta.drtool-subpage")) for inc in incs}
    assert rebuild_chain(str(full), [str(i) for i in incs]) > 100
    for inc, files in subpage_files.items():
        assert files and not list(inc.rglob("*.drtool-subpage"))
        assert (inc / "xtrabackup_checkpoints").is_file()
        numbers = innodb_delta.page_numbers(str(inc / "wiki" / "pages.ibd.delta"), 16384)
        assert len(numbers) == os.path.getsize(inc / "wiki" / "pages.ibd.delta") // 16384 - \
            -(-len(numbers) // innodb_delta.per_cluster(16384))
    prepare = [maria_binary("mariabackup"), "--no-defaults", "--prepare", f"--target-dir={full}"]
    assert subprocess.run(prepare, capture_output=True, check=False).returncode == 0
    for inc in incs:
        step = subprocess.run(prepare + [f"--incremental-dir={inc}"], capture_output=True, text=True, check=False)
        assert step.returncode == 0, step.stderr[-500:]


def test_tables_created_dropped_truncated_and_rebuilt_between_nights(nights: Nights) -> None:
    """DDL between the nights of a chain, with mariabackup copying in parallel (chunks of several
    files interleaved): every table restores as it was, whatever became of its file."""
    server, dr = nights.server, nights.dr
    config = write_config(dr.tmp / "ddl.toml", str(dr.repo),
                          {"ddl": server.source(method="physical", options=["--parallel=4"])})
    env = {"DRTOOL_CONFIG": str(config)}
    for name in ("gone", "emptied", "rebuilt"):
        server.sql(f"CREATE TABLE wiki.{name} (id INT PRIMARY KEY, body VARCHAR(400))")
        server.sql(f"INSERT INTO {name} SELECT seq, REPEAT(SHA2(seq, 256), 5) FROM seq_1_to_3000", "wiki")
    tables = "wiki.pages, wiki.events, wiki.emptied, wiki.rebuilt"

    def night() -> tuple[str, list[tuple[Any, ...]], dict[str, Any]]:
        settle(server)
        sums = server.sql(f"CHECKSUM TABLE {tables}")
        result = dr.run("backup", "--source", "ddl", "--json", env=env)
        assert result.code == 0, result.err
        (made,) = json.loads(result.out)["sources"]["ddl"]
        return made["id"], sums, made["meta"]
    night()
    server.sql("DROP TABLE wiki.gone")
    server.sql("TRUNCATE TABLE wiki.emptied")
    server.sql("INSERT INTO emptied SELECT seq, 'after truncate' FROM seq_1_to_100", "wiki")
    server.sql("ALTER TABLE wiki.rebuilt ADD COLUMN extra INT NOT NULL DEFAULT 7, FORCE")
    server.sql("CREATE TABLE wiki.born (id INT PRIMARY KEY, body VARCHAR(100))")
    server.sql("INSERT INTO born SELECT seq, 'new' FROM seq_1_to_500", "wiki")
    nights.change(5)
    second, second_sums, second_meta = night()
    server.sql("UPDATE wiki.rebuilt SET body = REVERSE(body) WHERE id % 10 = 0")
    server.sql("UPDATE wiki.born SET body = 'changed' WHERE id % 3 = 0")
    nights.change(6)
    third, third_sums, third_meta = night()
    assert second_meta["backup_type"] == third_meta["backup_type"] == "incremental"
    assert third_meta["subpage"]["pages_as_blocks"] > 0
    for snapshot_id, sums, name in ((second, second_sums, "ddl2"), (third, third_sums, "ddl3")):
        target = Path(server.root) / name
        try:
            result = dr.run("restore", snapshot_id[:12], "--source", "ddl", "--target", str(target), "--start",
                            "--json", env=env)
            assert result.code == 0, result.err
            conn = pymysql.connect(unix_socket=json.loads(result.out)["socket"], user="root",
                                   password=server.password)
            with conn.cursor() as cur:
                cur.execute(f"CHECKSUM TABLE {tables}")
                assert list(cur.fetchall()) == sums, f"{name} restored differently"
                cur.execute("SELECT COUNT(*) FROM wiki.born")
                assert cur.fetchone() == (500,)
                cur.execute("SHOW TABLES FROM wiki LIKE 'gone'")
                assert cur.fetchall() == ()
            conn.close()
        finally:
            stop_restored_mariadb(target)
