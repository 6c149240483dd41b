"""MariaDB binlog chains by GTID: which archived binlogs a replay reads, across switchovers.

Binlog file names belong to one server: after a switchover the new primary
writes its own ``binlog.000001 …`` (archived as ``s<server_id>-binlog.…``),
so "the next file" cannot be found by name.  Every binlog starts with a
``Gtid_list`` event (the server's GTID state before the file) and holds the
GTIDs of its transactions; per GTID domain the sequence number only grows
(a promoted replica continues from the highest one it applied).  A file
therefore covers, per domain, the sequence numbers after its start state up
to its last GTID, and a replay at position P can continue with any archived
file whose start state is at or before P in every domain.

The chain follows one server's files by number while it can (a closed
binlog is always followed by the next one of the same server), and only
when that server's archive ends jumps to another server's file by GTID.
The replay then starts that file (and the run of its successors) with
``mariadb-binlog --start-position=<GTID list>``, which skips the events the
chain already replayed (a replica with ``log_slave_updates`` logs the old
primary's transactions again, with their original GTIDs).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from drtool.snapshot.logwindow import Gap, Segment

Position = dict[int, tuple[int, int]]  # GTID domain -> (server id, sequence number) of its newest GTID
_GTID_RE = re.compile(r"(\d+)-(\d+)-(\d+)")
_STEM_RE = re.compile(r"^(.*)\.(\d+)$")


def parse_position(text: str | None) -> Position:
    """``"0-1-100,1-3-7"`` (a GTID list or state) as the newest GTID per domain."""
    return dict(_parse(text or ""))


@lru_cache(maxsize=1 << 16)
def _parse(text: str) -> tuple[tuple[int, tuple[int, int]], ...]:
    """Cached: one file's end state is the next one's start, and windows re-read every file per base."""
    pos: Position = {}
    for match in _GTID_RE.finditer(text):
        domain, server, seq = (int(g) for g in match.groups())
        if domain not in pos or seq > pos[domain][1]:
            pos[domain] = (server, seq)
    return tuple(pos.items())


def format_position(pos: Position) -> str:
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(pos.items()))


def advance(pos: Position, other: Position) -> Position:
    out = dict(pos)
    for domain, (server, seq) in other.items():
        if domain not in out or seq > out[domain][1]:
            out[domain] = (server, seq)
    return out


def stem(name: str) -> str:
    match = _STEM_RE.match(name)
    return match.group(1) if match else name


def archived_name(server_id: int | str | None, file_name: str) -> str:
    """The name a server's binlog is archived under: its server id first, so servers never collide."""
    return f"s{server_id}-{file_name}" if server_id not in (None, "") else file_name


@dataclass(frozen=True)
class Coverage:
    """The GTIDs one archived binlog holds: after ``start`` up to ``end``, per domain."""

    start: Position
    end: Position


def coverage(seg: Segment) -> Coverage | None:
    """From the ``.info`` record (``gtid_start`` / ``gtid_end``; older records: list + first/last GTID)."""
    extra = seg.extra
    if "gtid_end" in extra:
        return Coverage(parse_position(extra.get("gtid_start")), parse_position(extra.get("gtid_end")))
    if not extra.get("last_gtid"):
        return None
    start = parse_position(extra.get("gtid_list"))
    first = parse_position(extra.get("first_gtid"))
    for domain, (server, seq) in first.items():
        if domain not in start:
            start[domain] = (server, seq - 1)
    return Coverage(start, advance(start, parse_position(extra.get("last_gtid"))))


def _follows(pos: Position, cov: Coverage) -> bool:
    """Nothing between ``pos`` and the file's start is missing, and the histories agree."""
    for domain, (server, seq) in cov.start.items():
        have = pos.get(domain)
        if have is None:
            if seq > 0:
                return False
            continue
        if seq > have[1] or (seq == have[1] and seq > 0 and server != have[0]):
            return False  # events missing, or another server's transaction with the same number: diverged
    return True


def _advances(pos: Position, cov: Coverage) -> int:
    return sum(1 for d, (_s, n) in cov.end.items() if n > pos.get(d, (0, 0))[1])


def base_position(meta: dict[str, Any]) -> Position:
    """Where a base left off: its GTID state, and on a replica the primary's position it applied."""
    return advance(parse_position(meta.get("gtid_pos")), parse_position(meta.get("primary_gtid_pos")))


def base_file(meta: dict[str, Any], segments: list[Segment]) -> Segment | None:
    """The archived binlog a base's coordinates point into (this server's name, or the legacy bare one)."""
    wanted = [archived_name(meta.get("server_id"), str(meta.get("binlog_file", "")))]
    if meta.get("server_id") is not None:
        wanted.append(str(meta.get("binlog_file", "")))
    by_name = _archive(segments).by_name
    return next((by_name[n] for n in wanted if n in by_name), None)


class _Archive:
    """One list of archived binlogs, indexed once for every base's chain (a window plans one per base)."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments, self.size = segments, len(segments)
        self.by_name = {s.name: s for s in segments}
        by_stem = {(stem(s.name), s.seq): s for s in segments if s.seq is not None}
        self.successor = {s.name: by_stem.get((stem(s.name), s.seq + 1)) for s in segments if s.seq is not None}
        self.covered = [(seg, cov) for seg in segments if (cov := coverage(seg)) is not None]
        ends: dict[int, list[tuple[int, int]]] = {}
        for index, (_seg, cov) in enumerate(self.covered):
            for domain, (_server, seq) in cov.end.items():
                ends.setdefault(domain, []).append((seq, index))
        self.ends = {d: sorted(pairs) for d, pairs in ends.items()}

    def beyond(self, pos: Position) -> list[tuple[Segment, Coverage]]:
        """The files holding a GTID after ``pos`` in some domain (few, but at a switchover or a gap)."""
        found: set[int] = set()
        for domain, pairs in self.ends.items():
            start = bisect.bisect_right(pairs, (pos.get(domain, (0, 0))[1], 1 << 62))
            found.update(index for _seq, index in pairs[start:])
        return [self.covered[i] for i in sorted(found)]


_CACHED: list[_Archive] = []


def _archive(segments: list[Segment]) -> _Archive:
    cached = _CACHED[0] if _CACHED else None
    if cached is None or cached.segments is not segments or cached.size != len(segments):
        cached = _Archive(segments)  # holds the list, so its identity cannot be reused while cached
        _CACHED[:] = [cached]
    return cached


def chain_from(meta: dict[str, Any], segments: list[Segment]) -> list[Segment]:
    """The binlogs a replay from a base reads, in order (stops where the archive cannot continue).

    Along one server's files the GTID state only grows (each file's end state
    holds its predecessors'), so the position is taken at the end of each run.
    """
    archive = _archive(segments)
    pos = base_position(meta)
    chain: list[Segment] = []
    used: set[str] = set()
    nxt = base_file(meta, segments) or _jump(pos, archive, used)
    while nxt is not None:
        while nxt is not None:
            chain.append(nxt)
            used.add(nxt.name)
            last, nxt = nxt, archive.successor.get(nxt.name)
        pos = _after(pos, last)
        nxt = _jump(pos, archive, used)
    return chain


def _after(pos: Position, seg: Segment) -> Position:
    cov = coverage(seg)
    return advance(pos, cov.end) if cov else pos


def _jump(pos: Position, archive: _Archive, used: set[str]) -> Segment | None:
    """Across servers: the file that continues ``pos`` and reaches furthest."""
    if not pos:
        return None  # no GTID position to continue from (an archive without GTIDs): by name only
    best: tuple[int, int, str] | None = None
    found = None
    for seg, cov in archive.beyond(pos):
        if seg.name in used or not _follows(pos, cov):
            continue
        key = (_advances(pos, cov), sum(n for _s, n in cov.end.values()), seg.name)
        if best is None or key > best:
            best, found = key, seg
    return found


def gap_after(meta: dict[str, Any], chain: list[Segment], segments: list[Segment]) -> Gap | None:
    """What stops the chain while later binlogs are archived: a missing file of the server the chain
    was following (named by number), else the GTIDs no archived file continues (named by GTID)."""
    last = chain[-1] if chain else None
    if last is not None and last.seq is not None:
        same = sorted((s for s in segments if s.seq is not None and s.seq > last.seq
                       and stem(s.name) == stem(last.name)), key=lambda s: s.seq or 0)
        if same:
            return Gap(last.seq + 1, (same[0].seq or 0) - 1, last.name, same[0].name)
    pos = base_position(meta)
    for seg in chain:
        pos = _after(pos, seg)
    used = {s.name for s in chain}
    later = [seg for seg, _cov in _archive(segments).beyond(pos) if seg.name not in used]
    if not later:
        return None
    after = min(later, key=lambda s: (s.first_time or s.archived_at, s.name))
    before = last.name if last is not None else "(backup start)"
    return Gap(0, 0, before, after.name,
               missing=f"binlog events after GTID {format_position(pos) or '(none)'} (before {after.name})")


def replay_runs(meta: dict[str, Any], segments: list[Segment]) -> list[tuple[list[Segment], int | str | None]]:
    """The planned binlogs as runs of one server's consecutive files, each with where it starts.

    The base's own file starts at its byte position; a run reached by GTID
    starts after the chain's GTID position (``--start-position=<list>``).
    """
    runs: list[tuple[list[Segment], int | str | None]] = []
    pos = base_position(meta)
    first = base_file(meta, segments)
    for seg in segments:
        last = runs[-1][0][-1] if runs else None
        if (last is not None and last.seq is not None and seg.seq == last.seq + 1
                and stem(seg.name) == stem(last.name)):
            runs[-1][0].append(seg)
        elif seg is first and not runs:
            runs.append(([seg], int(meta.get("binlog_pos", 4))))
        else:
            runs.append(([seg], format_position(pos) or None))
        pos = _after(pos, seg)
    return runs
