"""The sub-page stream rewrite and the rebuild, on synthetic tablespaces and the real ``mbstream -x``.

No server here (tests/test_mariadb_subpage.py has the real one): these build
mbstreams the way mariabackup lays them out — a full with ``t.ibd``, an
incremental with ``t.ibd.meta`` then ``t.ibd.delta`` — to reach what a small
server does not: deltas of several clusters, chunks cut mid-page, files
interleaved, a ``.delta`` before its ``.meta``, a stream cut short or not an
mbstream.  Every rebuilt ``.delta`` must be byte for byte the one written.
"""
from __future__ import annotations

import io
import os
import itertools
import random
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from dbservers import maria_binary
from drtool.databases import innodb_delta
from drtool.databases.blockmap import BlockMapStore
from drtool.databases.subpage_backup import FullPassage, SubpageStream, rewritten_stream
from drtool.databases.subpage_restore import rebuild_chain
from drtool.errors import RestoreTargetError, SourceError
from drtool.sources import mbstream

PAGE = 4096  # small pages: a cluster names 1023 of them, so a few thousand cross clusters


def tablespace(pages: int, seed: int) -> bytearray:
    rng = random.Random(seed)
    return bytearray(rng.randbytes(pages * PAGE))


def delta_file(data: bytes, numbers: list[int]) -> bytes:
    """``numbers``' pages of ``data`` laid out as mariabackup's write filter does."""
    out = bytearray()
    per = innodb_delta.per_cluster(PAGE)
    for start in range(0, max(len(numbers), 1), per):
        group = numbers[start:start + per]
        last = start + per >= len(numbers)
        header = bytearray(PAGE)
        header[:4] = innodb_delta.LAST if last else innodb_delta.MORE
        for i, number in enumerate(group):
            struct.pack_into(">I", header, 4 + 4 * i, number)
        if len(group) < per:
            struct.pack_into(">I", header, 4 + 4 * len(group), innodb_delta.END)
        out += header
        for number in group:
            out += data[number * PAGE:(number + 1) * PAGE]
    return bytes(out)


def chunks(path: bytes, data: bytes, cut: int) -> list[bytes]:
    return [mbstream.payload_chunk(path, pos, data[pos:pos + cut]) for pos in range(0, len(data), cut)] + \
        [mbstream.eof_chunk(path)]


def interleave(first: list[bytes], second: list[bytes]) -> list[bytes]:
    """Chunks of two files alternating (``--parallel``), each file's in its own order."""
    return [x for pair in itertools.zip_longest(first, second) for x in pair if x is not None]


def meta(page_size: int = PAGE, zip_size: int = 0) -> bytes:
    return f"page_size = {page_size}\nzip_size = {zip_size}\nspace_id = 5\n".encode()


def run(stream: bytes, blockmap_store: BlockMapStore, parent: str | None, name: str,
        incremental: bool) -> tuple[bytes, Any]:
    pending = blockmap_store.begin(blockmap_store.committed(parent) if parent else None)
    rewritten = rewritten_stream(io.BufferedReader(io.BytesIO(stream)), pending, incremental)  # type: ignore[arg-type]
    assert isinstance(rewritten, SubpageStream if incremental else FullPassage)
    buffer = bytearray(1 << 20)
    out = bytearray()
    while count := rewritten.readinto(memoryview(buffer)):
        out += buffer[:count]
    rewritten.check_whole(name)
    blockmap_store.commit(pending, name)
    return bytes(out), rewritten


def extract(stream: bytes, target: Path) -> Path:
    target.mkdir()
    proc = subprocess.run([maria_binary("mbstream"), "-x", "-C", str(target)], input=stream, capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return target


def mutate(data: bytearray, pages: list[int], rng: random.Random) -> None:
    """A few bytes in the middle and the page's header and trailer, as a row update does."""
    for number in pages:
        base = number * PAGE
        for where in (16, rng.randrange(64, PAGE - 64), PAGE - 8):
            data[base + where:base + where + 6] = rng.randbytes(6)


def one_table_night(store: BlockMapStore, pages: int, changed: list[int], seed: int) -> tuple[bytes, bytes, bytes]:
    """Night "n0": a full of ``t.ibd`` (``pages`` pages) through the rewrite; then ``changed`` pages
    updated as a row update does.  Returns the full's stream, the .delta mariabackup would write
    and the incremental stream carrying it (.meta first)."""
    data = tablespace(pages, seed)
    full = b"".join(chunks(b"t.ibd", bytes(data), 1 << 20))
    run(full, store, None, "n0", False)
    mutate(data, changed, random.Random(seed))
    written = delta_file(bytes(data), changed)
    stream = b"".join(chunks(b"t.ibd.meta", meta(), 1 << 20) + chunks(b"t.ibd.delta", written, 1 << 20))
    return full, written, stream


@pytest.fixture
def store(tmp_path: Path) -> BlockMapStore:
    (tmp_path / "maps").mkdir()
    return BlockMapStore(tmp_path / "maps")


def test_two_nights_over_several_clusters_rebuild_byte_for_byte(store: BlockMapStore, tmp_path: Path) -> None:
    rng = random.Random(1)
    data = tablespace(3000, 1)
    full = b"".join(chunks(b"db/t.ibd", bytes(data), 1 << 20))
    out, _ = run(full, store, None, "n0", False)
    assert out == full  # a full passes through unchanged
    nights = []
    for n in (1, 2):
        changed = sorted(rng.sample(range(3000), 2100))  # three clusters of 1023
        mutate(data, changed, rng)
        written = delta_file(bytes(data), changed)
        stream = b"".join(chunks(b"db/t.ibd.meta", meta(), 1 << 20) + chunks(b"db/t.ibd.delta", written, 777_777))
        out, rewritten = run(stream, store, f"n{n - 1}", f"n{n}", True)
        assert rewritten.stats.pages == 2100 and rewritten.stats.pages_as_blocks == 2100
        assert rewritten.stats.stored_bytes < 0.45 * len(written)  # 3 of 8 blocks a page, + 22 bytes
        nights.append((out, written))
    full_dir = extract(full, tmp_path / "full")
    dirs = [extract(out, tmp_path / f"inc{n}") for n, (out, _) in enumerate(nights, 1)]
    assert (dirs[0] / "db" / "t.ibd.delta.drtool-subpage").exists()
    assert rebuild_chain(str(full_dir), [str(d) for d in dirs]) == 4200
    for directory, (_, written) in zip(dirs, nights):
        assert (directory / "db" / "t.ibd.delta").read_bytes() == written
        assert not list(directory.rglob("*.drtool-subpage"))


def test_a_delta_before_its_meta_is_stored_as_it_came_and_forgotten(store: BlockMapStore, tmp_path: Path) -> None:
    rng = random.Random(2)
    data = tablespace(50, 2)
    full = b"".join(chunks(b"t.ibd", bytes(data), 1 << 20))
    run(full, store, None, "n0", False)
    mutate(data, [3, 7], rng)
    first = delta_file(bytes(data), [3, 7])
    delta_chunks = chunks(b"t.ibd.delta", first, 5000)  # its .meta comes between its chunks
    stream = b"".join(delta_chunks[:1] + chunks(b"t.ibd.meta", meta(), 1 << 20) + delta_chunks[1:])
    out, rewritten = run(stream, store, "n0", "n1", True)
    assert rewritten.stats.files_as_came == ["t.ibd.delta"] and b"t.ibd.delta" + b".drtool-subpage" not in out
    mutate(data, [3, 9], rng)  # page 3 again: its base is night 1's page, which the map no longer claims
    second = delta_file(bytes(data), [3, 9])
    stream = b"".join(chunks(b"t.ibd.meta", meta(), 1 << 20) + chunks(b"t.ibd.delta", second, 1 << 20))
    out2, rewritten2 = run(stream, store, "n1", "n2", True)
    assert rewritten2.stats.pages == 2 and rewritten2.stats.pages_as_blocks == 0  # whole: the map forgot t.ibd
    dirs = [extract(out, tmp_path / "i1"), extract(out2, tmp_path / "i2")]
    rebuild_chain(str(extract(full, tmp_path / "full")), [str(d) for d in dirs])
    assert (dirs[0] / "t.ibd.delta").read_bytes() == first and (dirs[1] / "t.ibd.delta").read_bytes() == second


def test_an_empty_delta_is_rebuilt_empty(store: BlockMapStore, tmp_path: Path) -> None:
    run(b"".join(chunks(b"t.ibd", bytes(tablespace(4, 9)), 1 << 20)), store, None, "n0", False)
    stream = b"".join(chunks(b"t.ibd.meta", meta(), 1 << 20)) + mbstream.eof_chunk(b"t.ibd.delta")
    out, rewritten = run(stream, store, "n0", "n1", True)
    assert rewritten.stats.pages == 0
    inc = extract(out, tmp_path / "inc")
    rebuild_chain(str(tmp_path), [str(inc)])
    assert (inc / "t.ibd.delta").read_bytes() == b""


def test_compressed_tables_pass_through(store: BlockMapStore) -> None:
    data = tablespace(10, 3)
    run(b"".join(chunks(b"t.ibd", bytes(data), 1 << 20)), store, None, "n0", False)
    written = delta_file(bytes(data), [1, 2])
    stream = b"".join(chunks(b"t.ibd.meta", meta(16384, PAGE), 1 << 20) + chunks(b"t.ibd.delta", written, 1 << 20))
    out, rewritten = run(stream, store, "n0", "n1", True)
    assert rewritten.stats.files_as_came == ["t.ibd.delta"] and rewritten.stats.count_as_came == 1
    assert out == stream


def test_interleaved_files_and_renamed_checkpoints(store: BlockMapStore, tmp_path: Path) -> None:
    rng = random.Random(4)
    a, b = tablespace(40, 5), tablespace(40, 6)
    full = b"".join(interleave(chunks(b"a.ibd", bytes(a), PAGE * 3), chunks(b"b.ibd", bytes(b), PAGE * 5)))
    run(full, store, None, "n0", False)
    mutate(a, [1, 30], rng)
    mutate(b, [2, 39], rng)
    da, db = delta_file(bytes(a), [1, 30]), delta_file(bytes(b), [2, 39])
    parts = chunks(b"a.ibd.meta", meta(), 99) + chunks(b"b.ibd.meta", meta(), 99)
    parts += interleave(chunks(b"a.ibd.delta", da, 5000), chunks(b"b.ibd.delta", db, 3001))
    parts += chunks(b"xtrabackup_checkpoints", b"backup_type = incremental\n", 100)
    out, rewritten = run(b"".join(parts), store, "n0", "n1", True)
    assert rewritten.stats.pages_as_blocks == 4
    inc = extract(out, tmp_path / "inc")
    assert not (inc / "xtrabackup_checkpoints").exists()
    rebuild_chain(str(extract(full, tmp_path / "full")), [str(inc)])
    assert (inc / "a.ibd.delta").read_bytes() == da and (inc / "b.ibd.delta").read_bytes() == db
    assert (inc / "xtrabackup_checkpoints").read_bytes() == b"backup_type = incremental\n"


def test_a_stream_cut_short_or_not_an_mbstream_is_refused(store: BlockMapStore) -> None:
    data = tablespace(8, 7)
    written = delta_file(bytes(data), [1])
    stream = b"".join(chunks(b"t.ibd.meta", meta(), 1 << 20) + chunks(b"t.ibd.delta", written, 1 << 20))
    with pytest.raises(SourceError, match="cut short"):
        run(stream[:-40], store, None, "n1", True)
    not_magic = bytearray(stream)
    not_magic[0:8] = b"XBSTCK02"
    with pytest.raises(SourceError, match="does not start with XBSTCK01"):
        run(bytes(not_magic), store, None, "n1", True)


def test_a_map_that_cannot_be_written_is_not_kept_and_the_parents_stays(store: BlockMapStore,
                                                                        tmp_path: Path) -> None:
    """The cache's disk is gone mid-night (here: tonight's map directory removed): the stream is
    still rewritten whole and correct, the map is thrown away, the parent's map is untouched."""
    import shutil
    full, written, stream = one_table_night(store, 20, [4, 5], 8)
    pending = store.begin(store.committed("n0"))
    shutil.rmtree(pending.directory)
    rewritten = SubpageStream(io.BufferedReader(io.BytesIO(stream)), pending)  # type: ignore[arg-type]
    out = b""
    while piece := rewritten.read1(1 << 16):
        out += piece
    assert pending.failed and rewritten.stats.pages_as_blocks == 0  # the parent's links went with it
    assert store.commit(pending, "n1") is False
    assert store.committed("n1") is None and store.committed("n0") is not None
    inc = extract(out, tmp_path / "inc")
    rebuild_chain(str(extract(full, tmp_path / "full")), [str(inc)])
    assert (inc / "t.ibd.delta").read_bytes() == written


def test_a_section_of_many_tables_keeps_few_files_open(store: BlockMapStore, tmp_path: Path) -> None:
    """600 tablespaces (a MediaWiki section has tens of thousands): the map's open files stay
    bounded, below the default limit of 1024 descriptors, and every table's pages still go as blocks."""
    rng = random.Random(9)
    tables = {f"db/t{n}.ibd".encode(): tablespace(2, n) for n in range(600)}
    full = b"".join(b"".join(chunks(path, bytes(data), 1 << 20)) for path, data in tables.items())
    before = len(os.listdir("/proc/self/fd"))
    run(full, store, None, "n0", False)
    parts, written = [], {}
    for path, data in tables.items():
        mutate(data, [1], rng)
        written[path] = delta_file(bytes(data), [1])
        parts += chunks(path + b".meta", meta(), 1 << 20) + chunks(path + b".delta", written[path], 1 << 20)
    pending = store.begin(store.committed("n0"))
    rewritten = SubpageStream(io.BufferedReader(io.BytesIO(b"".join(parts))), pending)  # type: ignore[arg-type]
    out, most_open = bytearray(), 0
    while piece := rewritten.read1(1 << 16):
        out += piece
        most_open = max(most_open, len(os.listdir("/proc/self/fd")) - before)
    assert most_open <= 300 and rewritten.stats.pages_as_blocks == 600  # well below the 1024 default
    assert store.commit(pending, "n1")
    inc = extract(bytes(out), tmp_path / "inc")
    rebuild_chain(str(extract(full, tmp_path / "full")), [str(inc)])
    assert all((inc / path.decode()).with_suffix(".ibd.delta").read_bytes() == data for path, data in written.items())


def test_a_full_disk_while_rebuilding_is_one_line_naming_the_file(store: BlockMapStore, tiny_fs: Path) -> None:
    """The target's file system fills up while a .delta is rebuilt (a real 2 MiB tmpfs): a restore
    error naming the file and what to do, not an OSError."""
    from drtool.errors import RestoreTargetError
    full, _, stream = one_table_night(store, 300, list(range(300)), 10)
    out, _ = run(stream, store, "n0", "n1", True)
    full_dir, inc = extract(full, tiny_fs / "full"), extract(out, tiny_fs / "inc")  # 1.2 MiB + ~0.5 MiB
    with pytest.raises(RestoreTargetError) as caught:
        rebuild_chain(str(full_dir), [str(inc)])  # the rebuilt 1.2 MiB does not fit
    assert str(caught.value).startswith(f"cannot rebuild {inc / 't.ibd.delta'}: No space left on device")
    assert "free space on the --target file system" in caught.value.hint


class Trickle(io.RawIOBase):
    """A pipe read without a buffer in between: each read returns at most 1,000 bytes."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def,override]
        return self._data.readinto(memoryview(buffer)[:1000])


@pytest.mark.parametrize("read_size, source", [(1000, io.BufferedReader), (777_777, io.BufferedReader),
                                               (777_777, Trickle)])
def test_a_full_read_in_pieces_across_its_payloads_is_fingerprinted_whole(store: BlockMapStore, tmp_path: Path,
                                                                          read_size: int, source: type) -> None:
    """A full's payloads go straight into the reader's buffer; reads that end mid-block (1000
    bytes, 777,777; a source that returns 1,000 bytes a call) carry the block's start to the
    next read, so the map learns every block: the next night stores each changed page as its
    blocks, and rebuilds byte for byte."""
    data = tablespace(300, 11)
    other = tablespace(10, 12)
    full = b"".join(interleave(chunks(b"db/t.ibd", bytes(data), 5 * PAGE + 512), chunks(b"db/o.frm", bytes(other),
                                                                                        3333)))
    pending = store.begin(None)
    reader = Trickle(full) if source is Trickle else io.BufferedReader(io.BytesIO(full))
    rewritten = FullPassage(reader, pending)  # type: ignore[arg-type]
    out, buffer = bytearray(), bytearray(read_size)
    while count := rewritten.readinto(memoryview(buffer)):
        out += buffer[:count]
    rewritten.check_whole("n0")
    assert bytes(out) == full
    assert store.commit(pending, "n0")
    changed = [0, 5, 6, 149, 299]
    mutate(data, changed, random.Random(11))
    written = delta_file(bytes(data), changed)
    stream = b"".join(chunks(b"db/t.ibd.meta", meta(), 1 << 20) + chunks(b"db/t.ibd.delta", written, 1 << 20))
    inc_stream, night = run(stream, store, "n0", "n1", True)
    assert night.stats.pages_as_blocks == len(changed)
    inc = extract(inc_stream, tmp_path / "inc")
    rebuild_chain(str(extract(full, tmp_path / "full")), [str(inc)])
    assert (inc / "db" / "t.ibd.delta").read_bytes() == written


def test_a_full_cut_short_is_refused(store: BlockMapStore) -> None:
    full = b"".join(chunks(b"t.ibd", bytes(tablespace(8, 13)), 1 << 20))
    for cut in (len(full) - 40 - len(b"XBSTCK01"), 30):  # inside a payload, inside the first header
        with pytest.raises(SourceError, match="cut short"):
            run(full[:cut], store, None, "n0", False)


def many_tables_chain(store: BlockMapStore, tmp_path: Path, tables: int) -> tuple[Path, list[Path], list[dict]]:
    """A full of ``tables`` tables of different sizes and two incrementals changing a share of each:
    the extracted full, the extracted members, and per member the .delta mariabackup wrote per table."""
    rng = random.Random(21)
    datas = {f"db/t{n}.ibd".encode(): tablespace(60 + 150 * n, 30 + n) for n in range(tables)}
    full = b"".join(b"".join(chunks(path, bytes(data), 1 << 16)) for path, data in datas.items())
    run(full, store, None, "n0", False)
    members, written = [], []
    for night in (1, 2):
        parts, deltas = [], {}
        for path, data in datas.items():
            changed = sorted(rng.sample(range(len(data) // PAGE), len(data) // PAGE // 3))
            mutate(data, changed, rng)
            deltas[path] = delta_file(bytes(data), changed)
            parts += chunks(path + b".meta", meta(), 99) + chunks(path + b".delta", deltas[path], 50_000)
        out, rewritten = run(b"".join(parts), store, f"n{night - 1}", f"n{night}", True)
        assert rewritten.stats.pages_as_blocks == rewritten.stats.pages > 0
        members.append(extract(out, tmp_path / f"inc{night}"))
        written.append(deltas)
    return extract(full, tmp_path / "full"), members, written


def test_a_member_of_many_tables_is_rebuilt_on_threads_byte_for_byte(store: BlockMapStore, tmp_path: Path) -> None:
    """The files of a member are rebuilt side by side; the second member's bases are the first's
    rebuilt pages, so members must still go one after another."""
    full_dir, members, written = many_tables_chain(store, tmp_path, 9)
    pages = sum(len(delta) // PAGE for deltas in written for delta in deltas.values())
    rebuilt = rebuild_chain(str(full_dir), [str(m) for m in members])
    assert 0.9 * pages < rebuilt < pages  # every page but the header pages (one per cluster)
    for member, deltas in zip(members, written):
        for path, delta in deltas.items():
            assert (member / (path.decode() + ".delta")).read_bytes() == delta
        assert not list(member.rglob("*.drtool-subpage"))


def test_one_wrong_base_among_many_tables_fails_the_rebuild_naming_its_page(store: BlockMapStore,
                                                                             tmp_path: Path) -> None:
    """A base damaged in one table, while the other tables are rebuilt on other threads: the
    error names that table's page and is not lost among the files that went well."""
    from drtool.errors import RestoreTargetError
    full_dir, members, _ = many_tables_chain(store, tmp_path, 9)
    damaged = full_dir / "db" / "t4.ibd"
    data = bytearray(damaged.read_bytes())
    data[:] = bytes(len(data))  # every page of the full's copy of t4 zeroed
    damaged.write_bytes(bytes(data))
    with pytest.raises(RestoreTargetError) as caught:
        rebuild_chain(str(full_dir), [str(m) for m in members])
    assert "of db/t4.ibd in" in str(caught.value) and "does not match the digest" in str(caught.value)
    assert not (members[1] / "db" / "t0.ibd.delta").exists()  # the second member was not begun


def test_several_tables_rebuilt_at_once_byte_for_byte_and_a_bad_base_named(store: BlockMapStore,
                                                                          tmp_path: Path) -> None:
    """One incremental with five tables of different sizes (their files are rebuilt on several threads,
    each in batches of pages): each .delta byte for byte; a base page changed under one table fails
    the rebuild naming that table's page, whatever the other threads were doing."""
    rng = random.Random(5)
    sizes = {f"db/t{n}.ibd".encode(): pages for n, pages in enumerate((900, 40, 2500, 1, 700))}
    data = {path: tablespace(pages, n) for n, (path, pages) in enumerate(sizes.items())}
    full = b"".join(x for path in data for x in chunks(path, bytes(data[path]), 1 << 20))
    run(full, store, None, "n0", False)
    written, parts = {}, []
    for path, pages in sizes.items():
        changed = sorted(rng.sample(range(pages), max(1, pages * 2 // 3)))
        mutate(data[path], changed, rng)
        written[path] = delta_file(bytes(data[path]), changed)
        parts.append(chunks(path + b".meta", meta(), 1 << 20) + chunks(path + b".delta", written[path], 300_000))
    stream = b"".join(interleave(interleave(parts[0], parts[1]), interleave(parts[2], parts[3])) + parts[4])
    out, rewritten = run(stream, store, "n0", "n1", True)
    assert rewritten.stats.pages_as_blocks == sum(max(1, p * 2 // 3) for p in sizes.values())
    full_dir = extract(full, tmp_path / "full")
    inc = extract(out, tmp_path / "inc")
    spare = tmp_path / "inc-copy"
    shutil.copytree(inc, spare)
    assert rebuild_chain(str(full_dir), [str(inc)]) == rewritten.stats.pages_as_blocks
    for path, delta in written.items():
        assert (inc / (path.decode() + ".delta")).read_bytes() == delta
    changed_in_t2 = innodb_delta.page_numbers(str(inc / "db" / "t2.ibd.delta"), PAGE)[5]
    with open(full_dir / "db" / "t2.ibd", "r+b") as handle:  # the full's copy of one page of t2, not as backed up
        for block in range(0, PAGE, 512):  # every block: some are not stored in the delta
            handle.seek(changed_in_t2 * PAGE + block + 100)
            handle.write(b"\xff")
    with pytest.raises(RestoreTargetError) as caught:
        rebuild_chain(str(full_dir), [str(spare)])
    assert str(caught.value).startswith(f"page {changed_in_t2} of db/t2.ibd in {spare}: the rebuilt page does not "
                                        f"match the digest"), caught.value
