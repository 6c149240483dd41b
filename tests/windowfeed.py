"""Feeding a restore's tree writer the way the stream reader does: in windows, each window's
buffer reused (here: zeroed) as soon as the reader would reuse it, ``lag`` windows later — a write
still reading it then would write zeros."""
from __future__ import annotations

from collections import deque

from drtool.databases.tree_writer import TreeWriter


def feed_windows(writer: TreeWriter, stream: bytes, cuts: list[int]) -> None:
    """Write ``stream`` through ``writer`` in windows ending at ``cuts``, then finish it."""
    held: deque[bytearray] = deque()
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        window = bytearray(stream[start:end])
        writer.write(memoryview(window))
        held.append(window)
        if len(held) > writer.lag:
            reused = held.popleft()
            reused[:] = bytes(len(reused))
    writer.finish()
