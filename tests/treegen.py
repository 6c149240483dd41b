"""Build file trees with every kind of entry, and compare trees exactly."""
from __future__ import annotations

import os
import stat
from pathlib import Path


def make_rich_tree(root: Path) -> None:
    """Regular, empty, sparse, symlink, hard links, FIFO, non-UTF-8 name, odd modes."""
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "dir" / "hello.txt").write_text("hello world\n" * 100)
    (root / "empty").write_bytes(b"")
    (root / "dir" / "sub" / "random.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    with open(root / "sparse.img", "wb") as handle:
        handle.write(b"head")
        handle.seek(64 * 1024 * 1024)
        handle.write(b"tail")
    os.symlink("dir/hello.txt", root / "link-to-hello")
    os.symlink("/nonexistent/target", root / "dangling")
    os.link(root / "dir" / "hello.txt", root / "hardlink-to-hello")
    os.link(root / "dir" / "hello.txt", root / "dir" / "sub" / "another-hardlink")
    os.mkfifo(root / "fifo")
    weird = os.fsencode(str(root)) + b"/caf\xe9-latin1-\xff.txt"
    with open(weird, "wb") as handle:
        handle.write(b"non-utf8 name")
    (root / "dir" / "private").write_text("secret")
    os.chmod(root / "dir" / "private", 0o600)
    os.chmod(root / "dir" / "hello.txt", 0o640)
    os.utime(root / "empty", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))


def describe(root: Path) -> dict[bytes, tuple]:
    """Everything a restore must reproduce: type, mode, size, content, link target, mtime, links."""
    result: dict[bytes, tuple] = {}
    base = os.fsencode(str(root))
    inode_groups: dict[int, list[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, base)
            st = os.lstat(path)
            mode = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    content = handle.read()
                inode_groups.setdefault(st.st_ino, []).append(rel)
                result[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_size, content, st.st_mtime_ns)
            elif stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                result[rel] = ("other", mode, stat.S_IMODE(st.st_mode))
    groups = sorted(tuple(sorted(g)) for g in inode_groups.values() if len(g) > 1)
    result[b"<hardlink-groups>"] = tuple(groups)
    return result


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def dump_like_text(size: int, seed: int = 1) -> bytes:
    """Dump-like rows: compressible, with repeats far apart (what the long-window profile is for)."""
    import random
    rng = random.Random(seed)
    words = [f"w{rng.randrange(5000)}".encode() for _ in range(3000)]
    rows, total = [], 0
    while total < size:
        row = b"INSERT INTO t VALUES (" + b",".join(rng.choice(words) for _ in range(12)) + b");\n"
        rows.append(row)
        total += len(row)
    return b"".join(rows)[:size]
