"""check's summary: each damaged object or missing parent one error line, with what depends on it.

Pure logic over snapshot manifests (``maintain.checkreport``); the same against a real server and real
pack files is in tests/test_mariadb_chain_broken.py."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from drtool.maintain.checkreport import Problem, broken_chains, summarise
from drtool.snapshot.model import Snapshot

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)


def night(day: int, ident: str, parent: Snapshot | None = None) -> Snapshot:
    meta = {"source": "wiki-phys", "backup_type": "incremental" if parent else "full"}
    if parent is not None:
        meta["incremental_parent"] = parent.id
    return Snapshot("wiki-phys", "db1", T0 + timedelta(days=day), "ab" * 32, kind="mariadb-physical", meta=meta,
                    id=ident * 8)


def test_incrementals_whose_parent_is_missing_are_one_line() -> None:
    full = night(0, "a")
    second = night(1, "b", full)
    third = night(2, "c", second)
    kept = [second, third]  # the full is not in the repository
    chains = broken_chains(kept, set(), {})
    assert [c["snapshot"] for c in chains] == [second.id, third.id]
    assert {c["member"] for c in chains} == {full.id}
    (line,) = summarise({}, kept, {}, chains)
    assert line.startswith(f"incremental physical snapshots {second.short_id} (wiki-phys ")
    assert f", {third.short_id} (wiki-phys " in line
    assert f"their chain needs snapshot {full.short_id} (parent of {second.short_id}), which is not in the " \
           f"repository; take a full backup (drtool backup --source wiki-phys --full) and forget the orphans " \
           f"(drtool forget {second.short_id} {third.short_id})" in line


def test_a_lone_orphan_keeps_its_own_line() -> None:
    full, second = night(0, "a"), night(1, "b")
    second.meta["incremental_parent"] = full.id
    chains = broken_chains([second], set(), {})
    assert summarise({}, [second], {}, chains) == [chains[0]["problem"]]


def test_a_lost_pack_is_one_line_naming_who_needs_it_and_whom_it_takes_down() -> None:
    full = night(0, "a")
    second = night(1, "b", full)
    third = night(2, "c", second)
    snaps = [third, full, second]  # listing order is not time order
    pack = "packs/5e/" + "5e" * 32
    culprits = {full.id: f"pack {pack}", second.id: f"pack {pack}"}  # both read it; third through its chain
    problems = {pack: Problem(pack, [f"pack {pack} is missing"])}
    lines = summarise(problems, snaps, culprits, broken_chains(snaps, set(), culprits))
    (line,) = lines
    assert line.count(pack) == 1
    assert line.startswith(f"pack {pack} is missing; needed by snapshot(s) {full.short_id} (wiki-phys "
                           f"2026-11-24T02:00:00+00:00), {second.short_id} (")
    assert f"through their chain, incremental physical snapshot(s) {third.short_id} (" in line
    assert line.count(f"{second.short_id} (") == 1  # needs the pack itself: not named again as taken down
    assert line.endswith(f"(drtool forget {full.short_id} {second.short_id} {third.short_id})")
    assert problems[pack].snapshots == [full.id, second.id] and problems[pack].chains == [third.id]
