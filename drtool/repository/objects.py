"""Every object a repository holds: its name prefix and its envelope kind (format version 1).

One place names them, so the format can be read off one page and no module
invents a prefix another does not know (``_clear_interrupted_init`` must
know what counts as repository data; prune's Object Lock renewal what is
still referenced).  These strings *are* the on-disk format: every sealed
object is authenticated with ``"drtool/v1" ‖ kind ‖ object id`` as associated
data, and content-named objects take their id from a keyed hash whose
domain is the kind.  Changing one byte makes every existing repository
unreadable; ``tests/test_objects.py`` pins them and the committed
repository ``tests/fixtures/repo-format-1`` proves old data still opens.

Name layout (docs/architecture.md, "Repository format")::

    config                     the one object without a prefix
    keys/<slot id>             key slots (not sealed by the envelope)
    packs/<xx>/<pack id>       sealed compression groups + sealed trailer
    index/<id>                 which packs hold which blobs
    snapshots/<id>             snapshot manifests (the commit point of a backup)
    locks/<id>                 repository locks (mutable; never under Object Lock)
    prune/<id>                 prune's record of condemned packs
    rehearsals/<id>            restore-rehearsal results
    wal/<source key>/<id>      archived PostgreSQL WAL (+ ``<id>.info``)
    binlog/<source key>/<id>   archived MariaDB binlogs (+ ``<id>.info``)

Backends cannot import this layer; the S3 backend's own two prefixes
(``locks/`` is never put under retention, ``packs/`` gets the storage class)
are checked against these by the tests.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from drtool.errors import DrtoolError

# ----- name prefixes ------------------------------------------------------------------------------
CONFIG = "config"
KEYS = "keys"
PACKS = "packs"
INDEX = "index"
SNAPSHOTS = "snapshots"
LOCKS = "locks"
PRUNE = "prune"
REHEARSALS = "rehearsals"
TOMBSTONES = "tombstones"
WAL = "wal"          # also the log kind of PostgreSQL segments in snapshots and the catalog
BINLOG = "binlog"    # also the log kind of MariaDB binlogs
LOG_KINDS = (WAL, BINLOG)
INFO_SUFFIX = ".info"  # the companion of an archived log object, holding its catalog row

# Not repository data: scratch objects of ``drtool repo validate``, removed when it ends.
VALIDATE = "validate"

# ----- envelope kinds (associated data, and keyed-id domains of content-named objects) -----------
CONFIG_KIND = b"config"
INDEX_KIND = b"index"
SNAPSHOT_KIND = b"snapshot"
LOCK_KIND = b"lock"
PRUNE_KIND = b"prune"
REHEARSAL_KIND = b"rehearsal"
TOMBSTONE_KIND = b"tombstone"
LOG_INFO_KIND = b"log-info"
TRAILER_KIND = b"pack-trailer"
GROUP_DATA_KIND = b"group-data"  # a compression group of data blobs, inside a pack
GROUP_TREE_KIND = b"group-tree"  # a compression group of tree blobs


def log_kind(kind: str) -> bytes:
    """The envelope kind of an archived log object: its log kind (``wal``, ``binlog``)."""
    return kind.encode()


# ----- names of single objects ------------------------------------------------------------------
def object_name(prefix: str, object_id: str) -> str:
    return f"{prefix}/{object_id}"


def key_name(slot_id: str) -> str:
    return f"{KEYS}/{slot_id}"


def pack_name(pack_id: bytes) -> str:
    """``packs/<first two hex digits>/<hex id>``: 256 folders keep local directories small."""
    hexid = pack_id.hex()
    return f"{PACKS}/{hexid[:2]}/{hexid}"


def pack_id_from_name(name: str) -> bytes:
    """The pack id of a ``packs/`` object name; ValueError when it is not one."""
    return bytes.fromhex(name.rsplit("/", 1)[1])


def log_prefix(kind: str, source_key: str) -> str:
    """Folder of one source's archived logs (``source_key``: a keyed hash of its name)."""
    return f"{kind}/{source_key}"


FORMAT_VERSION = 1  # of the repository (its ``config`` object)


@dataclass(frozen=True)
class RepoConfig:
    repo_id: str
    version: int = FORMAT_VERSION
    file_chunk_avg: int = 1024 * 1024
    stream_chunk_avg: int = 16 * 1024
    compression_level: int = 3

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "RepoConfig":
        data = json.loads(raw)
        if data.get("version") != FORMAT_VERSION:
            raise DrtoolError(f"repository format version {data.get('version')} is not supported",
                              hint="upgrade drtool")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
