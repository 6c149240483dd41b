"""Console entry point, kept light: an interrupt while drtool starts up ends it quietly.

Until the command's modules are imported an interrupt (Ctrl-C, SIGINT) can
land inside an import -- a traceback from click or SQLAlchemy, and with the
key being derived on another thread meanwhile, sometimes a process that
hangs on a half-released import lock.  Nothing has been written during
start-up, so the first interrupt simply says so and exits 130.  Once the
command runs (``allow_interrupts``, called by the ``drtool`` group) an
interrupt is a ``KeyboardInterrupt`` again, handled by ``main``; after the
command, while the interpreter shuts down, it is quiet once more.
"""
from __future__ import annotations

import os
import signal
import sys


def _quiet_exit(_signum: int, _frame: object) -> None:
    try:
        from drtool.childenv import kill_running_groups
        kill_running_groups()  # a password command that is still running
    except Exception:  # noqa: BLE001 - exiting anyway
        pass
    os.write(2, b"drtool: interrupted; nothing was written\n")
    os._exit(130)


def quiet_interrupts() -> None:
    try:
        signal.signal(signal.SIGINT, _quiet_exit)
    except ValueError:  # not the main thread: nothing to do
        pass


def allow_interrupts() -> None:
    """From here on an interrupt raises KeyboardInterrupt (the command cleans up and exits 130)."""
    if signal.getsignal(signal.SIGINT) is _quiet_exit:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run() -> None:
    quiet_interrupts()
    from drtool.cli.main import main
    code = main(sys.argv[1:])
    quiet_interrupts()
    sys.exit(code)
