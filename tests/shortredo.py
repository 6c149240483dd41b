"""A ``bindir`` whose mariabackup copies an incremental's redo log short, as mariabackup 10.11 now
and then does by itself: the real program's stream passed through with ``to_lsn`` set to
``last_lsn`` in ``xtrabackup_checkpoints`` (so the copied log ends at the checkpoint, without the
checkpoint's 16-byte record), on the first ``short`` incremental runs.  Other invocations
(``--version``, ``--prepare``, a full ``--backup``) run the real mariabackup unchanged.

Used by ``test_mariadb_redo_copy`` and by the generator of the
``mariadb-physical-short-1`` fixture (run with an older drtool that stored such copies).
"""
from __future__ import annotations

import sys
from pathlib import Path

from dbservers import bindir_with_mariabackup, maria_binary

SCRIPT = '''#!{python}
"""mariabackup, but the first {short} incremental --backup runs end their copied log at to_lsn."""
import os, re, struct, subprocess, sys, zlib
REAL, RUNS, SHORT = {real!r}, {runs!r}, {short}
args = sys.argv[1:]
if "--backup" not in args or not any(a.startswith("--incremental-lsn") for a in args):
    os.execv(REAL, [REAL, *args])
with open(RUNS, "a") as runs:
    runs.write(" ".join(args) + "\\n")
with open(RUNS) as runs:
    run = len(runs.read().splitlines())
proc = subprocess.Popen([REAL, *args], stdout=subprocess.PIPE)
data = proc.stdout.read()
out, pos = bytearray(), 0
while pos < len(data):
    flags, kind, plen = struct.unpack_from("<BBI", data, pos + 8)
    path, body = data[pos + 14:pos + 14 + plen], pos + 14 + plen
    if kind != ord("P"):
        out += data[pos:body]
        pos = body
        continue
    length, offset, crc = struct.unpack_from("<QQI", data, body)
    payload = data[body + 20:body + 20 + length]
    if path == b"xtrabackup_checkpoints" and run <= SHORT:
        text = payload.decode()
        last = re.search(r"last_lsn = (\\d+)", text).group(1)
        payload = re.sub(r"(?m)^to_lsn = \\d+$", "to_lsn = " + last, text).encode()
    out += data[pos:body] + struct.pack("<QQI", len(payload), offset, zlib.crc32(payload)) + payload
    pos = body + 20 + length
sys.stdout.buffer.write(out)
sys.exit(proc.wait())
'''


def shortening_bindir(tmp_path: Path, short: int) -> tuple[Path, Path]:
    """A bindir whose mariabackup shortens the first ``short`` incremental copies; the file that counts them."""
    runs = tmp_path / f"runs{short}"
    script = SCRIPT.format(python=sys.executable, short=short, real=maria_binary("mariabackup"), runs=str(runs))
    return bindir_with_mariabackup(tmp_path / f"bin{short}", script), runs
