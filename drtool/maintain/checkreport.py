"""What ``drtool check`` found, one line per problem, each with what depends on it.

The checker meets one loss several times: a lost pack is missing from the
listing, the snapshots whose trees need it are affected, and an incremental
physical snapshot whose full reads it cannot be restored either; a pack
whose bytes changed fails both its name's hash and its groups'
authentication.  Reported as found, the same pack was named two or three
times and counted as as many errors.  Here every damaged object (pack,
index, snapshot manifest, key slot) or unindexed blob or unreadable tree is
one :class:`Problem`, its messages joined, with the snapshots that need it
and the incrementals it takes down through their chain; an incremental
whose parent is simply not in the repository is one problem per missing
parent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from drtool.repository.objects import SNAPSHOTS, object_name
from drtool.snapshot.model import Snapshot
from drtool.snapshot.names import display


@dataclass
class Problem:
    """One damaged or missing thing: ``key`` names it (``packs/…``, ``snapshots/…``, ``blob …``)."""

    key: str
    messages: list[str] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)  # ids whose own trees need it
    chains: list[str] = field(default_factory=list)     # incrementals it takes down through their chain

    def as_dict(self) -> dict[str, Any]:
        return {"object": self.key, "messages": self.messages, "snapshots": self.snapshots,
                "chains": self.chains}


@dataclass
class CheckReport:
    snapshots: int = 0
    packs: int = 0
    packs_read: int = 0
    read_subset: str = ""  # which packs were downloaded (DataSubset.describe), "" for none
    blobs_read: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_objects: list[str] = field(default_factory=list)
    affected_snapshots: dict[str, list[str]] = field(default_factory=dict)
    vanished: list[dict[str, object]] = field(default_factory=list)
    broken_chains: list[dict[str, object]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__, ok=self.ok)


def key_of(culprit: str) -> str:
    """The problem key of a culprit as the tree walk names it (``pack packs/…`` -> ``packs/…``)."""
    return culprit[len("pack "):] if culprit.startswith("pack ") else culprit


def _label(snap: Snapshot) -> str:
    return f"{snap.short_id} ({display(snap.name)} {snap.time.isoformat()})"


def _source(snap: Snapshot) -> str:
    return str(snap.meta.get("source") or snap.name)


def summarise(problems: dict[str, Problem], snaps: list[Snapshot], culprits: dict[str, str],
              chains: list[dict[str, object]]) -> list[str]:
    """The error lines: one per problem, then one per missing parent not already a problem."""
    by_id = {s.id: s for s in snaps}
    for snap_id, culprit in culprits.items():
        problems.setdefault(key_of(culprit), Problem(key_of(culprit), [f"{culprit} is damaged"])) \
            .snapshots.append(snap_id)
    orphans: dict[str, list[dict[str, object]]] = {}
    for chain in chains:
        key = key_of(str(chain["damage"])) if chain["damage"] else object_name(SNAPSHOTS, str(chain["member"]))
        if key in problems:  # named once: an incremental that needs the pack itself is listed there
            if str(chain["snapshot"]) not in problems[key].snapshots:
                problems[key].chains.append(str(chain["snapshot"]))
        else:
            orphans.setdefault(str(chain["member"]), []).append(chain)
    lines = [_line(p, by_id) for p in problems.values()]
    for group in orphans.values():
        lines.append(str(group[0]["problem"]) if len(group) == 1 else _orphans_line(group, by_id))
    return lines


def _line(problem: Problem, by_id: dict[str, Snapshot]) -> str:
    text = "; ".join(problem.messages)
    needing = sorted((by_id[i] for i in problem.snapshots if i in by_id), key=lambda s: (s.time, s.id))
    if needing:
        text += f"; needed by snapshot(s) {', '.join(_label(s) for s in needing)}"
    downed = sorted((by_id[i] for i in problem.chains if i in by_id), key=lambda s: (s.time, s.id))
    if downed:
        text += (f"; through their chain, incremental physical snapshot(s) "
                 f"{', '.join(_label(s) for s in downed)} cannot be restored either")
    physical = [s for s in needing + downed if s.kind == "mariadb-physical"]
    if downed or physical:
        sources = sorted({_source(s) for s in physical + downed})
        text += (f"; take a full backup ({', '.join(f'drtool backup --source {s} --full' for s in sources)}) and "
                 f"forget what cannot be restored (drtool forget {' '.join(s.short_id for s in physical)})")
    return text


def _orphans_line(group: list[dict[str, object]], by_id: dict[str, Snapshot]) -> str:
    """Several incrementals whose chain needs the same missing snapshot: one line."""
    snaps = [by_id[str(c["snapshot"])] for c in group]
    why = str(group[0]["problem"]).split("cannot be restored: its chain ", 1)[-1].split("; take a full", 1)[0]
    return (f"incremental physical snapshots {', '.join(_label(s) for s in snaps)} cannot be restored: their "
            f"chain {why}; take a full backup (drtool backup --source {_source(snaps[0])} --full) and forget "
            f"the orphans (drtool forget {' '.join(s.short_id for s in snaps)})")


def broken_chains(snaps: list[Snapshot], unreadable: set[str], culprits: dict[str, str]) -> list[dict[str, object]]:
    """Incremental physical snapshots that cannot be restored because of a member of their chain:
    one missing (or whose manifest cannot be read: ``unreadable``), one affected by damaged data
    (``culprits``: snapshot id -> the damaged pack), or one whose copied redo log stops short
    (``ChainUnpreparable``: that incremental itself is named too, nothing else reports it).
    Damage to the incremental itself is already reported as such; this names the incrementals
    that damage elsewhere takes down with it."""
    from drtool.databases.mariadb_chain import ChainBroken, ChainUnpreparable, chain_of, is_incremental
    found: list[dict[str, object]] = []
    for snap in snaps:
        if not is_incremental(snap):
            continue
        try:
            chain = chain_of(snap, snaps)
        except ChainUnpreparable as exc:
            what, member, damage = (f"holds incremental {exc.member.short_id}, whose copied redo log ends before its "
                                    f"checkpoint (mariabackup --prepare refuses it)", exc.member.id, "")
        except ChainBroken as exc:
            child = exc.child.short_id if exc.child else snap.short_id
            state = "whose manifest cannot be read" if exc.missing in unreadable else "which is not in the repository"
            what, member, damage = f"needs snapshot {exc.missing[:8]} (parent of {child}), {state}", exc.missing, ""
        else:
            hurt = next((m for m in chain[:-1] if m.id in culprits), None)
            if hurt is None:
                continue
            role = "the full" if hurt is chain[0] else "an incremental"
            what, member, damage = (f"needs snapshot {hurt.short_id} ({role} of its chain), which is affected "
                                    f"by damaged data ({culprits[hurt.id]})", hurt.id, culprits[hurt.id])
        found.append({"snapshot": snap.id, "name": snap.name, "member": member, "damage": damage,
                      "problem": f"incremental physical snapshot {_label(snap)} cannot be restored: its chain "
                                 f"{what}; take a full backup (drtool backup --source {_source(snap)} --full) "
                                 f"and forget the orphan (drtool forget {snap.short_id})"})
    return found
