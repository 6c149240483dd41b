"""Why a newer base was passed over, said once per chain, and what is restored instead.

A physical chain whose full lost a pack makes every member of it an unusable
base: the full itself and each incremental on top of it.  The planner keeps
them apart (``PitrPlan.passed_over``, one entry per base, for ``--json`` and
for the rehearsal record), but an operator reading a warning at 3 a.m. needs
one sentence per cause: which snapshots were passed over, which member and
which pack (or which missing parent) is the reason, and which older chain is
restored instead.  Bases passed over for the same cause are one line here.
"""
from __future__ import annotations

from datetime import timezone
from typing import TYPE_CHECKING

from drtool.databases.mariadb_chain import ChainBroken, ChainUnpreparable, is_incremental
from drtool.errors import SnapshotNotFound
from drtool.snapshot.model import Snapshot

if TYPE_CHECKING:
    from drtool.snapshot.logwindow import BrokenBase


class BaseDataMissing(SnapshotNotFound):
    """A base's chain is whole, but a pack one of its members reads is not in the repository.

    ``member`` is the first member of the chain that lacks data and ``lack`` what it lacks
    (``pack packs/… is missing from the repository``), so a caller can group the bases one loss
    takes down."""

    hint = ("run 'drtool check' to see what else is missing; restore an older base (an earlier "
            "--point-in-time), and take a full backup now: drtool backup --source NAME --full")

    def __init__(self, message: str, hint: str | None = None, *, member: Snapshot | None = None,
                 lack: str = "", role: str = "") -> None:
        super().__init__(message, hint)
        self.member, self.lack, self.role = member, lack, role


def data_missing(source: str, base: Snapshot, chain: list[Snapshot], unreadable: dict[str, str]) -> BaseDataMissing:
    """``base`` cannot be restored: the first member of its chain that lacks data, in one line."""
    members = chain or [base]
    member = next(m for m in members if m.id in unreadable)
    role = "the full" if member is members[0] and len(members) > 1 else "an incremental" if len(members) > 1 else ""
    which = "it" if member.id == base.id else f"snapshot {member.short_id} of its chain ({role})"
    return BaseDataMissing(f"snapshot {base.short_id} of source {source} cannot be restored: {which} needs data "
                           f"that is not in the repository ({unreadable[member.id]})",
                           hint=BaseDataMissing.hint.replace("NAME", source), member=member,
                           lack=unreadable[member.id], role=role)


def _cause(error: SnapshotNotFound) -> tuple[str, str]:
    """(grouping key, why in words) of one passed-over base's error."""
    if isinstance(error, BaseDataMissing) and error.member is not None:
        member = error.member
        what = f"{'incremental' if is_incremental(member) else 'full'} {member.short_id}"
        return f"data:{member.id}:{error.lack}", f"{what} needs data that is not in the repository ({error.lack})"
    if isinstance(error, ChainUnpreparable):
        return (f"short:{error.member.id}", f"incremental {error.member.short_id}'s copied redo log ends before its "
                                            f"checkpoint (mariabackup --prepare refuses it)")
    if isinstance(error, ChainBroken) and error.missing and error.child is not None:
        return (f"missing:{error.missing}", f"snapshot {error.missing[:8]} (parent of {error.child.short_id}) "
                                            f"is not in the repository")
    return f"other:{error}", str(error)


def _when(snap: Snapshot) -> str:
    return snap.time.astimezone(timezone.utc).isoformat(timespec="seconds")


def _members(snaps: list[Snapshot]) -> str:
    """``3f2a9c1d (full, 2026-11-24T02:00:04+00:00)``, or for several ``3f2a9c1d (full, …) + 2
    incremental(s) 51d0b8e2, 7c1e04aa (the last 2026-11-26T02:00:05+00:00)``: a week's chain in one
    readable clause."""
    first, rest = snaps[0], snaps[1:]
    head = f"{first.short_id} ({'incremental' if is_incremental(first) else 'full'}, {_when(first)})"
    if not rest:
        return head
    return f"{head} + {len(rest)} incremental(s) {', '.join(s.short_id for s in rest)} (the last {_when(rest[-1])})"


def _snapshots(snaps: list[Snapshot]) -> str:
    return f"{'snapshot' if len(snaps) == 1 else 'snapshots'} {_members(snaps)}"


def grouped(broken: list[BrokenBase]) -> list[tuple[str, list[Snapshot]]]:
    """(why, the bases it makes unusable), one entry per cause, in the order first met."""
    groups: dict[str, tuple[str, list[Snapshot]]] = {}
    for one in broken:
        key, why = _cause(one.error)
        groups.setdefault(key, (why, []))[1].append(one.base.snapshot)
    return list(groups.values())


def fallback_lines(source: str, passed_over: list[BrokenBase], base: Snapshot, chain: list[Snapshot]) -> list[str]:
    """One line per cause: the bases passed over for it, the member and pack (or parent) that is the
    reason, and the chain restored instead (``base`` and its ``chain``)."""
    instead = (f"the older chain {_members(chain)}" if len(chain) > 1
               else f"the older complete base {base.short_id} ({_when(base)})")
    return [f"passed over {_snapshots(snaps)} of source {source}: {why}; restoring {instead} instead"
            for why, snaps in grouped(passed_over)]


def unusable_lines(source: str, broken: list[BrokenBase]) -> list[str]:
    """``drtool mariadb window``'s bases that cannot start a recovery, one line per cause."""
    return [f"{'not a usable base' if len(snaps) == 1 else 'not usable bases'}: {_snapshots(snaps)} of source "
            f"{source}: {why} (its chain is broken: not counted above; take a full backup: drtool backup "
            f"--source {source} --full)" for why, snaps in grouped(broken)]
