"""The names of repository objects are the on-disk format: they must never change by accident.

``drtool/repository/objects.py`` is the one place that names object prefixes
and envelope kinds.  Every string is pinned here byte for byte (format 1),
the committed fixture repository (test_format_fixture.py) proves old data
still opens, and no other module may spell a prefix or kind itself.
"""
from __future__ import annotations

import re
from pathlib import Path

from drtool.backends import s3
from drtool.repository import objects
from drtool.repository.packfile import DATA_BLOB, TREE_BLOB, group_kind

PACKAGE = Path(__file__).resolve().parent.parent / "drtool"

FORMAT_1_PREFIXES = {"CONFIG": "config", "KEYS": "keys", "PACKS": "packs", "INDEX": "index",
                     "SNAPSHOTS": "snapshots", "LOCKS": "locks", "PRUNE": "prune",
                     "REHEARSALS": "rehearsals", "WAL": "wal", "BINLOG": "binlog",
                     "INFO_SUFFIX": ".info", "VALIDATE": "validate",
                     "TOMBSTONES": "tombstones"}  # added by issue 15: old builds ignore the prefix
FORMAT_1_KINDS = {"CONFIG_KIND": b"config", "INDEX_KIND": b"index", "SNAPSHOT_KIND": b"snapshot",
                  "LOCK_KIND": b"lock", "PRUNE_KIND": b"prune", "REHEARSAL_KIND": b"rehearsal",
                  "LOG_INFO_KIND": b"log-info", "TRAILER_KIND": b"pack-trailer",
                  "GROUP_DATA_KIND": b"group-data", "GROUP_TREE_KIND": b"group-tree",
                  "TOMBSTONE_KIND": b"tombstone"}


def test_prefixes_and_kinds_are_the_format_1_strings() -> None:
    for name, value in {**FORMAT_1_PREFIXES, **FORMAT_1_KINDS}.items():
        assert getattr(objects, name) == value, name
    assert objects.LOG_KINDS == ("wal", "binlog")
    assert [objects.log_kind(k) for k in objects.LOG_KINDS] == [b"wal", b"binlog"]
    assert (group_kind(DATA_BLOB), group_kind(TREE_BLOB)) == (b"group-data", b"group-tree")
    pack_id = bytes(range(32))
    assert objects.pack_name(pack_id) == f"packs/00/{pack_id.hex()}"
    assert objects.pack_id_from_name(objects.pack_name(pack_id)) == pack_id
    assert objects.key_name("abc") == "keys/abc" and objects.object_name("index", "f00") == "index/f00"
    assert objects.log_prefix("wal", "0123") == "wal/0123"


def test_the_s3_backend_agrees_on_the_two_prefixes_it_must_know() -> None:
    """Backends may not import the repository layer: its copies are checked here."""
    assert s3.UNLOCKED_PREFIXES == (f"{objects.LOCKS}/",)
    assert s3.PACKS_PREFIX == f"{objects.PACKS}/"


def test_no_other_module_spells_a_prefix_or_kind() -> None:
    """Object names built from literals ("snapshots/…", b"lock") anywhere but objects.py."""
    kinds = "|".join(re.escape(v.decode()) for v in FORMAT_1_KINDS.values())
    prefixes = "|".join(re.escape(v) for k, v in FORMAT_1_PREFIXES.items() if k not in ("CONFIG", "INFO_SUFFIX"))
    patterns = [re.compile(rf'b"({kinds})"'),                       # an envelope kind
                re.compile(rf'f?"({prefixes})/'),                   # a name under a prefix
                re.compile(r'list_objects\("|(put|get)_object\("'),  # a prefix as a plain literal
                re.compile(r'backend\.(stat|get|put|delete)\("config"')]  # the config object
    allowed = {PACKAGE / "repository" / "objects.py", PACKAGE / "backends" / "s3.py"}
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in allowed or "testing" in path.parts or "migrations" in path.parts:  # migrations are history
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in patterns):
                offenders.append(f"{path.relative_to(PACKAGE.parent)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
