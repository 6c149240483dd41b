"""Named crash points for crash-consistency tests (as borg's test hooks).

When ``DRTOOL_CRASH_AT`` names a point, the process kills itself with
SIGKILL there: no cleanup, no atexit, exactly like a power cut.  Unset in
production, the check is one dictionary lookup.
"""
from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("DRTOOL_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
