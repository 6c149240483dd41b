#!/usr/bin/env python3
"""The data side of ``scripts/bench``: the generated data set (cached per generator
version), copying it into the source directory warm, and checking a restore.

Split out of scripts/bench.py (which re-exports these names) to keep each module
under 600 lines; the benchmark modes import them from ``bench`` as before.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
MAKE_DATASET = REPO_ROOT.parent / "shared" / "bench" / "make_dataset.py"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def du_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def forget_deleted_inodes(keep_warm: Path) -> None:
    """Sync, drop clean caches and re-read ``keep_warm`` (root only; else a no-op).

    This machine's root file system is ext4 without a journal.  There, inode
    allocation skips inodes deleted less than 5 s ago (305 s while their
    inode-table block is dirty) and reads each candidate's block from the
    buffer cache to find out, so a 3,400-file restore a few seconds after
    the previous run's restore tree was deleted spends ~1 s of CPU in
    ``open(O_CREAT)`` (perf: ``recently_deleted``, ``find_inode_bit``).  With
    the buffer cache dropped the check is skipped, as on a fresh disk.  The
    tool's repository and caches are read back in, so the restore stays
    warm-cache.  Every tool gets the same treatment right before its restore.
    """
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("1\n")
    except OSError:
        return  # not root: every tool runs under the same (slower) conditions
    read_tree(keep_warm)


def read_tree(top: Path) -> None:
    """Read every file under ``top`` once, so that it is in the page cache."""
    for folder, _dirs, files in os.walk(top):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                while handle.read(1 << 20):
                    pass


def rsync(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of ``src``, all of it in the page cache.

    rsync leaves files it finds unchanged alone, and those may have been
    dropped from the cache by an earlier restore's cache drop (or a run of
    another benchmark): without reading them back, the next tool's backup
    read them from disk and was charged for it (a 200,000-file backup took
    20 s instead of 8, with 8 s of system time).
    """
    dst.mkdir(parents=True, exist_ok=True)
    subprocess.run(["rsync", "-a", "--delete", f"{src}/", f"{dst}/"], check=True)
    read_tree(dst)


def generator_digest() -> str:
    return hashlib.sha256(MAKE_DATASET.read_bytes()).hexdigest()[:16]


def dataset(work: Path, args: argparse.Namespace) -> Path:
    """Generate (or reuse) the data set, cached by scale/smallfiles + seed."""
    if args.smallfiles:
        key, extra = f"smallfiles-{args.smallfiles}-seed{args.seed}", ["--smallfiles", str(args.smallfiles)]
    else:
        key, extra = f"scale-{args.scale:g}-seed{args.seed}", ["--scale", str(args.scale)]
    final = work / "data" / key
    marker = final / ".complete"
    digest = generator_digest()
    if marker.exists() and marker.read_text().strip() == digest:
        log(f"reusing cached data set {final}")
        return final
    tmp = final.with_name(key + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log(f"generating data set {key} (slow; cached for later runs)")
    subprocess.run([sys.executable, str(MAKE_DATASET), str(tmp), "--seed", str(args.seed)] + extra,
                   check=True)
    (tmp / ".complete").write_text(digest + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def find_restored_root(target: Path) -> Optional[Path]:
    """The directory under target that holds dumps/wiki.sql (shallowest)."""
    for dirpath, dirnames, _ in os.walk(target):
        if (Path(dirpath) / "dumps" / "wiki.sql").is_file():
            return Path(dirpath)
        dirnames.sort()
    return None


def verify_restore(target: Path, expected: Path) -> tuple[bool, str]:
    root = find_restored_root(target)
    if root is None:
        return False, "restored tree not found (no dumps/wiki.sql under target)"
    p = subprocess.run(["diff", "-rq", "--no-dereference", str(expected), str(root)],
                       capture_output=True, text=True)
    if p.returncode == 0:
        return True, ""
    lines = (p.stdout + p.stderr).strip().splitlines()
    return False, f"restore differs from {expected.name} ({len(lines)} diff lines): " + " | ".join(lines[:3])
