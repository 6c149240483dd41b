"""Recovery targets other than a time: a log position, a transaction, a named restore point.

A time target is planned from the commit times recorded per archived log
file.  These targets are planned from what the archive knows about them: an
LSN names its WAL file directly, a transaction id is found through the
committed-id range recorded per WAL file by ``wal-push``, and a restore
point through the record ``drtool pg restore-point`` stored beside the WAL.
The engine turns a target into a :class:`TargetPosition`; the planner then
picks the newest base that was consistent before it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drtool.errors import UsageError

KINDS = ("lsn", "xid", "name")


@dataclass(frozen=True)
class RecoveryTarget:
    """``restore --target-lsn`` / ``--target-xid`` / ``--target-name``."""

    kind: str   # one of KINDS
    value: str

    def describe(self) -> str:
        return {"lsn": f"LSN {self.value}", "xid": f"transaction {self.value}",
                "name": f"restore point {self.value!r}"}[self.kind]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}


def target_from_options(lsn: str | None, xid: str | None, name: str | None) -> RecoveryTarget | None:
    """At most one of the three options; None when none was given."""
    given = [RecoveryTarget(kind, value) for kind, value in (("lsn", lsn), ("xid", xid), ("name", name))
             if value is not None]
    if len(given) > 1:
        raise UsageError("give at most one of --target-lsn, --target-xid and --target-name")
    return given[0] if given else None


@dataclass(frozen=True)
class TargetPosition:
    """Where in the log archive a target lies.

    ``seq`` is the log file the target is in (the first that may hold it);
    ``position`` an engine-specific order key (PostgreSQL: the LSN) that a
    base's consistent end must not exceed; ``note`` says how it was found.
    """

    seq: int
    position: int
    note: str
