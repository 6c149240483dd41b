"""The paged id table's lookup in C (repository/_idprobe.c) answers exactly as the Python path.

A wrong "present" would make a backup skip storing a blob, so every kind of id is asked of both
paths over a real table file and a real filter: present, absent, crowded past their two buckets
(LMDB must answer), removed, the slot markers themselves, ids the filter rules out, and every id
again under a token the table does not hold (a writer began: BUSY).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from drtool.repository import idtable
from drtool.repository.idfilter import IdFilter
from drtool.repository.idtable import BUSY, IdTable

TOKEN = b"t" * 8


@pytest.fixture
def paged(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A table of 20,000 ids (30 crowding one home bucket, 500 then removed) and a filter holding
    every id but the last 1,000 of the table's (so the filter, asked first, rules those out)."""
    lead = os.urandom(8)
    crowded = [lead + os.urandom(24) for _ in range(30)]
    ids = [os.urandom(32) for _ in range(20_000)] + crowded
    table = IdTable.start(tmp_path / "ids.table", idtable.capacity_for(len(ids)))
    table.add(ids)
    removed = ids[:500]
    for blob_id in removed:
        table.remove(blob_id)
    table.install(tmp_path / "ids.table", TOKEN)
    table.paged = True
    filt = IdFilter.start(tmp_path / "ids.bloom", 40_000)
    filt.add(ids[:-1_030] + crowded)
    filt.install(tmp_path / "ids.bloom", 1)
    asked = (ids + [os.urandom(32) for _ in range(5_000)] + [lead + os.urandom(24) for _ in range(20)]
             + [bytes(32), b"\xff" * 32])
    yield table, filt, asked, removed, ids[-1_030:-30]
    table.close()
    filt.close()


def test_the_extension_is_built_here() -> None:
    """scripts/test builds it (setup.py): a missing module would leave every test below comparing
    Python with itself."""
    assert idtable._PagedProbe is not None


@pytest.mark.parametrize("with_filter", [True, False])
def test_the_c_probe_answers_every_id_as_the_python_path(paged, with_filter: bool) -> None:  # type: ignore[no-untyped-def]
    table, filt, asked, removed, filtered_out = paged
    used = filt if with_filter else None
    native, python = table.answerer(TOKEN, used), table.answerer(TOKEN, used, compiled=False)
    assert type(native).__name__ == "PagedProbe"
    answers = [native(b) for b in asked]
    assert answers == [python(b) for b in asked]
    assert answers.count(True) > 18_000 and answers.count(None) >= 22  # 22 crowded ids go to LMDB
    assert not any(native(b) for b in removed)
    assert True not in answers[-2:]  # the slot markers themselves are never "present"
    outs = [native(b) for b in filtered_out]
    expected = [filt.maybe(b) for b in filtered_out] if with_filter else [True] * len(filtered_out)
    assert outs == expected and (not with_filter or outs.count(False) > 900)  # the filter's false
    # positives (~1 %) are then found in the table
    assert [native(memoryview(b)) for b in asked[:300]] == answers[:300]


def test_under_another_token_neither_path_answers(paged) -> None:  # type: ignore[no-untyped-def]
    table, filt, asked, _removed, _out = paged
    native, python = table.answerer(TOKEN, filt), table.answerer(TOKEN, filt, compiled=False)
    table.set_token(BUSY)  # a writer began after the answerers were made
    answers = [native(b) for b in asked]
    assert answers == [python(b) for b in asked]
    assert True not in answers and None in answers  # False only where the filter rules an id out
    assert all(answer is None for blob_id, answer in zip(asked, answers) if filt.maybe(blob_id))


def test_a_closed_table_raises_as_the_python_path_does(paged) -> None:  # type: ignore[no-untyped-def]
    table, _filt, asked, _removed, _out = paged
    native, python = table.answerer(TOKEN), table.answerer(TOKEN, compiled=False)
    table._map.close()
    for lookup in (native, python):
        with pytest.raises(ValueError):
            lookup(asked[600])


def test_the_environment_switch_keeps_the_python_path(paged, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    table, _filt, asked, _removed, _out = paged
    monkeypatch.setenv("DRTOOL_INDEX_PROBE", "python")
    answerer = table.answerer(TOKEN)
    assert type(answerer).__name__ == "function" and answerer(asked[600]) is True
