#!/usr/bin/env python3
"""What a sub-page delta would store for a MariaDB night 2 (docs/performance.md, issue 19).

Two native ``mariabackup --backup`` copies of a throwaway server are taken around the
bench's 1 % ``UPDATE`` (scripts/bench_databases.py), then their ``.ibd`` files are compared
page by page: changed pages (what a page-level incremental stores), changed blocks of
several sizes, and each changed page XORed with its previous version, all compressed
with zstd level 1.  A measurement to decide a design, not part of the product.

    scripts/measure_subpage.py [--rows 300000] [--work /var/tmp/drtool-subpage]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_databases as bd  # noqa: E402

PAGE = 16384
BLOCKS = (256, 512, 1024)


def two_copies(work: Path, rows: int) -> tuple[Path, Path]:
    """Native copies before and after the bench's UPDATE, dirty pages flushed before each."""
    server = bd.MariaBench(work, False)
    server.start()
    try:
        server.sql("CREATE DATABASE sbtest")
        for t in range(1, 5):
            server.sql(f"CREATE TABLE sbtest{t} (id INT PRIMARY KEY, k INT NOT NULL, c CHAR(120) NOT NULL, "
                       f"pad CHAR(60) NOT NULL, KEY k_{t}(k)) ENGINE=InnoDB", "sbtest")
            server.sql(f"INSERT INTO sbtest{t} SELECT seq, FLOOR(RAND(seq)*{rows}), "
                       f"SUBSTRING(REPEAT(SHA2(seq, 256), 2), 1, 120), SUBSTRING(SHA2(seq * 7, 256), 1, 60) "
                       f"FROM seq_1_to_{rows}", "sbtest")
        server.settle()
        cnf = work / "client.cnf"
        cnf.write_text(f'[client]\npassword="{bd.ROOT_PW}"\n')

        def copy(target: Path) -> None:
            bd.run(["mariabackup", f"--defaults-extra-file={cnf}", "--backup", f"--target-dir={target}",
                    f"--datadir={server.data}", f"--socket={server.sock}", "--user=root"])
        copy(work / "before")
        for t in range(1, 5):
            server.sql(f"UPDATE sbtest{t} SET k = k + 1, c = REVERSE(c) WHERE id % 100 = 0", "sbtest")
        server.settle()
        copy(work / "after")
    finally:
        server.stop()
    return work / "before" / "sbtest", work / "after" / "sbtest"


def compare(before: Path, after: Path) -> None:
    zc = zstandard.ZstdCompressor(level=1)
    pages = changed = 0
    changed_pages, xors = bytearray(), bytearray()
    blocks = {size: bytearray() for size in BLOCKS}
    counts = dict.fromkeys(BLOCKS, 0)
    data = 0
    for new_file in sorted(after.glob("*.ibd")):
        new, old = new_file.read_bytes(), (before / new_file.name).read_bytes()
        data += len(new)
        for off in range(0, len(new), PAGE):
            new_page, old_page = new[off:off + PAGE], old[off:off + PAGE]
            pages += 1
            if new_page == old_page:
                continue
            changed += 1
            changed_pages += new_page
            if len(old_page) == PAGE:
                xors += (int.from_bytes(new_page, "little") ^ int.from_bytes(old_page, "little")).to_bytes(PAGE, "little")
            for size in BLOCKS:
                for o in range(0, PAGE, size):
                    if new_page[o:o + size] != old_page[o:o + size]:
                        blocks[size] += new_page[o:o + size]
                        counts[size] += 1

    def share(buf: bytearray) -> str:
        stored = len(zc.compress(bytes(buf)))
        return f"{stored / 2**20:.1f} MiB zstd-1 ({100 * stored / data:.1f} % of the data files)"
    print(f"data files {data / 2**20:.1f} MiB, {pages} pages, {changed} changed ({100 * changed / pages:.1f} %)")
    print(f"changed pages: {len(changed_pages) / 2**20:.1f} MiB raw, {share(changed_pages)}")
    for size in BLOCKS:
        print(f"changed {size}-byte blocks: {counts[size] / max(changed, 1):.1f} per changed page of "
              f"{PAGE // size}, {share(blocks[size])}")
    print(f"changed pages XORed with their previous version: {share(xors)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=300000, help="rows per sbtest table (4 tables)")
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/drtool-subpage"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    try:
        compare(*two_copies(args.work, args.rows))
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
