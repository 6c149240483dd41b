"""Start-up keeps stderr to drtool's one line: ``hashlib``'s import-time tracebacks are dropped.

Under a tight address-space limit (``ulimit -v``) while the key is being derived, importing
``hashlib`` could not get the SHA-3 family from OpenSSL and logged a traceback for each
(``logging.exception`` on the root logger) before drtool's own one-line error; CI saw it once in
test_log_archiving's out-of-memory test, which cannot make it happen on demand.  Here the same
records are logged, as hashlib logs them, in a fresh interpreter after drtool's start-up filter.
"""
from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import logging
from drtool.cli.entry import quiet_hashlib_import_noise
quiet_hashlib_import_noise()
for name in ("sha3_224", "sha3_256"):
    try:
        raise ValueError("unsupported hash type " + name)
    except ValueError:
        logging.exception("code for hash %s was not found.", name)   # hashlib.py, as it does it
logging.warning("some other library's warning")
"""


def test_hashlibs_import_tracebacks_are_dropped_and_other_warnings_kept() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "sha3" not in proc.stderr, proc.stderr
    assert "some other library's warning" in proc.stderr  # only that record is filtered


def test_without_the_filter_the_probe_prints_the_tracebacks() -> None:
    """The probe reproduces what CI saw (else the test above could not fail)."""
    proc = subprocess.run([sys.executable, "-c", PROBE.replace("quiet_hashlib_import_noise()\n", "")],
                          capture_output=True, text=True, timeout=60)
    assert proc.stderr.count("Traceback") == 2 and "code for hash sha3_224 was not found" in proc.stderr
