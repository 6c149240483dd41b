#!/usr/bin/env python3
"""Generate demo data: a small SQL dump and a media tree (standard library only).

    make_sample.py OUT [--night 1|2]

Night 2 edits a few rows, appends some, adds and removes a few media files,
so the demo shows an incremental second backup.
"""
import argparse
import random
from pathlib import Path


def dump_text(rng: random.Random, rows: int, edited: set[int]) -> str:
    words = ["wiki", "page", "revision", "media", "talk", "user", "edit", "history", "link", "file"]
    lines = ["-- MariaDB dump (demo)", "CREATE TABLE page (id INT PRIMARY KEY, title TEXT, body TEXT);"]
    for i in range(rows):
        body = " ".join(rng.choice(words) for _ in range(40))
        if i in edited:
            body = "EDITED " + body
        lines.append(f"INSERT INTO page VALUES ({i}, 'Page_{i}', '{body}');")
    lines.append("-- Dump completed")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--night", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(42)
    rows = 20000 if args.night == 1 else 20400
    edited = set(random.Random(7).sample(range(20000), 200)) if args.night == 2 else set()
    (args.out / "dumps").mkdir(parents=True, exist_ok=True)
    (args.out / "dumps" / "wiki.sql").write_text(dump_text(rng, rows, edited))
    media_rng = random.Random(1)
    for i in range(120):
        path = args.out / "media" / f"{i % 8:x}" / f"File_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = media_rng.randbytes(media_rng.randint(2_000, 400_000))
        if args.night == 2:
            if i % 40 == 0:
                path.unlink(missing_ok=True)
            continue  # night 2 leaves existing media untouched
        path.write_bytes(data)
    if args.night == 2:
        new = args.out / "media" / "new"
        new.mkdir(parents=True, exist_ok=True)
        for i in range(5):
            (new / f"Upload_{i}.jpg").write_bytes(media_rng.randbytes(100_000))


if __name__ == "__main__":
    main()
