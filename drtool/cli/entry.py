"""Console entry point, kept light: an interrupt while drtool starts up ends it quietly.

Until the command's modules are imported an interrupt (Ctrl-C, SIGINT) can
land inside an import -- a traceback from click or SQLAlchemy, and with the
key being derived on another thread meanwhile, sometimes a process that
hangs on a half-released import lock.  Nothing has been written during
start-up, so the first interrupt simply says so and exits 130.  Once the
command runs (``allow_interrupts``, called by the ``drtool`` group) an
interrupt is a ``KeyboardInterrupt`` again, handled by ``main``; after the
command, while the interpreter shuts down, it is quiet once more.

Start-up also runs without the cyclic garbage collector: importing click,
SQLAlchemy and the command's modules allocates enough containers to trigger
several full collections over everything imported so far, ~0.15 s of CPU
for every command (a cron run, each ``wal-push`` of an archiving server),
and import leaves no cycles worth collecting.  When the command starts, what
the imports made is frozen out of later collections and the collector runs
as usual.
"""
from __future__ import annotations

import gc
import os
import signal
import sys


def _quiet_exit(_signum: int, _frame: object) -> None:
    try:
        from drtool.api.settings import kill_running_groups
        kill_running_groups()  # a password command that is still running
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
    os.write(2, b"drtool: interrupted; nothing was written\n")
    os._exit(130)


def quiet_interrupts() -> None:
    """SIGINT ends start-up quietly, unless whoever started drtool ignores it (a job started in
    the background with ``&`` or ``nohup``, which Ctrl-C at the terminal must not stop): an
    ignored SIGINT stays ignored, as Python's own handler leaves it."""
    try:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, _quiet_exit)
    except ValueError:  # not the main thread: nothing to do
        pass


def allow_interrupts() -> None:
    """From here on an interrupt raises KeyboardInterrupt (the command cleans up and exits 130)."""
    if signal.getsignal(signal.SIGINT) is _quiet_exit:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _collector_held:
        collector_after_start_up()


_collector_held = False


def hold_collector_for_start_up() -> None:
    global _collector_held
    if gc.isenabled():
        gc.disable()
        _collector_held = True


def collector_after_start_up() -> None:
    """The imports' objects frozen out of later collections; the collector on again."""
    global _collector_held
    if _collector_held:
        gc.freeze()
        gc.enable()
        _collector_held = False


def _looks_like_no_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "failed to map segment" in str(exc)


def _hashlib_noise(record: object) -> bool:
    """False for the traceback ``hashlib`` logs, at import, for each algorithm it could not get from
    OpenSSL (seen under a tight address-space limit, ``ulimit -v``, while the key was being
    derived: four SHA-3 tracebacks before drtool's one line).  drtool does not use those; an
    algorithm it needs and lacks fails where it is used, with one line."""
    return getattr(record, "msg", None) != "code for hash %s was not found."


def quiet_hashlib_import_noise() -> None:
    """Filter that record out at the root logger, which ``hashlib`` logs it on (``logging.exception``,
    configuring a stderr handler first).  drtool imports ``hashlib`` late or never, and not with
    the rest of start-up here: its libcrypto stays out of a backup's memory (drtool/digests.py)."""
    import logging
    logging.root.addFilter(_hashlib_noise)


def run() -> None:
    quiet_interrupts()
    hold_collector_for_start_up()
    quiet_hashlib_import_noise()
    try:
        from drtool.cli.main import main
        code = main(sys.argv[1:])
    except Exception as exc:  # noqa: BLE001 - e.g. no memory left to import the command's modules
        what = (f"{type(exc).__name__}: {exc}" if not _looks_like_no_memory(exc) else
                "not enough memory to load drtool (raise ulimit -v / the unit's MemoryMax)")
        os.write(2, f"drtool: error: cannot run: {what}\n".encode("utf-8", "replace"))
        code = 126 if "wal-fetch" in sys.argv else 1
    collector_after_start_up()  # a command that ended before it started (--help, a usage error)
    quiet_interrupts()
    sys.exit(code)
