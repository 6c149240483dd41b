import sys

try:
    from drtool.cli.entry import quiet_interrupts, run
    quiet_interrupts()  # an interrupt while starting up: one line, exit 130, no traceback
except BaseException as exc:  # a broken install must not read as "WAL file not archived" (exit 1)
    sys.stderr.write(f"drtool: internal error: cannot load drtool: {type(exc).__name__}: {exc}\n")
    sys.exit(126 if "wal-fetch" in sys.argv else 1)

if __name__ == "__main__":
    run()
