"""``check --read-data-subset``: a random share, part N of T by pack id, or about a size.

The parts are the promise a weekly timer relies on (1/7 … 7/7 read every
pack once), so they are tested against a real repository with one damaged
pack: exactly one part finds it, and the parts together read every pack
once.  Parsing and the size rule are pure functions, tested directly.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from conftest import DrEnv
from drtool.errors import UsageError
from drtool.maintain.subset import DataSubset, in_part


@pytest.mark.parametrize("text, expected", [
    ("5", DataSubset(percent=5.0)), ("2.5%", DataSubset(percent=2.5)), ("100", DataSubset(percent=100.0)),
    ("1/7", DataSubset(part=1, parts=7)), (" 7 / 7 ", DataSubset(part=7, parts=7)),
    ("500M", DataSubset(size=500 * 2**20)), ("1.5GiB", DataSubset(size=3 * 2**29)), ("2t", DataSubset(size=2**41)),
])
def test_the_three_forms_parse(text: str, expected: DataSubset) -> None:
    assert DataSubset.parse(text) == expected


@pytest.mark.parametrize("text, problem", [
    ("0", "a percentage must be above 0 and at most 100"), ("100.5", "a percentage must be above 0"),
    ("0/7", "the part must be 1 to 7 of 7"), ("8/7", "the part must be 1 to 7 of 7"),
    ("1/0", "T must be at least 1"), ("0M", "the size must be above zero"),
    ("abc", "is not a percentage, a part or a size"), ("-5", "is not a percentage"), ("5X", "is not a percentage"),
])
def test_a_bad_subset_names_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(UsageError) as caught:
        DataSubset.parse(text)
    assert problem in str(caught.value) and "N/T" in caught.value.hint


def test_the_parts_cover_every_pack_once_and_keep_their_packs() -> None:
    rng = random.Random(7)
    packs = {rng.randbytes(32): 1 for _ in range(2000)}
    parts = [set(DataSubset(part=n, parts=7).select(packs)) for n in range(1, 8)]
    assert sum(len(p) for p in parts) == len(packs) and set().union(*parts) == set(packs)
    assert all(200 < len(p) < 380 for p in parts), [len(p) for p in parts]  # ids are uniform: ~286 each
    grown = {**packs, **{rng.randbytes(32): 1 for _ in range(500)}}
    assert parts[2] <= set(DataSubset(part=3, parts=7).select(grown))  # new packs do not move old ones
    assert all(in_part(p, 3, 7) for p in parts[2])


def test_a_size_reads_random_packs_until_it_is_reached() -> None:
    rng = random.Random(3)
    packs = {rng.randbytes(32): rng.randint(1, 64) * 2**20 for _ in range(400)}
    limit = 1000 * 2**20
    first, second = (DataSubset(size=limit).select(packs, seed) for seed in (1, 2))
    for chosen in (first, second):
        total = sum(packs[p] for p in chosen)
        assert total >= limit and total - max(packs[p] for p in chosen) < limit  # stopped once reached
    assert first != second  # random, not the same packs every run
    assert DataSubset(size=2**50).select(packs) == sorted(packs)  # more than there is: all of it


def _damage_one_pack(repo: Path) -> str:
    """Flip a byte in the middle of the largest pack; its name (``packs/xx/…``)."""
    packs = sorted((p for p in (repo / "packs").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim = packs[-1]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x40
    os.chmod(victim, 0o600)
    victim.write_bytes(bytes(data))
    return str(victim.relative_to(repo))


def test_exactly_one_part_finds_a_damaged_pack_and_the_parts_read_every_pack(repo_env: DrEnv) -> None:
    data = repo_env.tmp / "data"
    data.mkdir()
    for night in range(8):  # each backup writes packs of its own
        (data / f"file{night}").write_bytes(random.Random(night).randbytes(300_000))
        assert repo_env.run("backup", "--name", "files", str(data)).code == 0
    total = json.loads(repo_env.run("check", "--json").out)["packs"]
    damaged = _damage_one_pack(repo_env.repo)

    reports = [repo_env.run("check", "--read-data-subset", f"{n}/3", "--json") for n in (1, 2, 3)]
    found = [r for r in reports if damaged in r.out]
    assert len(found) == 1 and found[0].code == 1
    assert [r.code for r in reports].count(0) == 2
    read = [json.loads(r.out) for r in reports]
    assert sum(r["packs_read"] for r in read) == total
    assert [r["read_subset"] for r in read] == [f"part {n}/3 by pack id" for n in (1, 2, 3)]

    whole = repo_env.run("check", "--read-data")
    assert whole.code == 1 and damaged in whole.err + whole.out


def test_a_bad_subset_is_a_usage_error_before_the_passphrase(repo_env: DrEnv) -> None:
    result = repo_env.run("check", "--read-data-subset", "8/7", env={"DRTOOL_PASSWORD": ""})
    assert result.code == 2 and result.err.strip().splitlines() == [
        "drtool: error: --read-data-subset '8/7': the part must be 1 to 7 of 7; give a percentage (5 or 2.5%), "
        "a part N/T (1/7 … 7/7), or a size (500M, 50G)"]
    both = repo_env.run("check", "--read-data", "--read-data-subset", "5")
    assert both.code == 2 and "either --read-data or --read-data-subset" in both.err


def test_the_api_still_takes_a_share_of_packs(repo_env: DrEnv) -> None:
    """``api.check(session, 1.0)`` (a share, as before the subset forms) reads every pack; 0 none."""
    from drtool import api
    data = repo_env.tmp / "data"
    data.mkdir()
    (data / "f").write_bytes(random.Random(1).randbytes(200_000))
    assert repo_env.run("backup", "--name", "files", str(data)).code == 0
    session = repo_env.session()
    try:
        everything, nothing = api.check(session, 1.0), api.check(session, 0)
    finally:
        session.close()
    assert everything.packs_read == everything.packs > 0 and everything.read_subset == "every pack"
    assert nothing.packs_read == 0 and nothing.read_subset == ""
