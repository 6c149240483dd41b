"""What ``drtool pg`` and ``drtool mariadb`` share: source and timeout options, deadlines, windows."""
from __future__ import annotations

import logging
import os
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import click

from drtool.cli.complete import source_names
from drtool.cli.context import CliState, emit
from drtool.errors import UsageError

log = logging.getLogger("drtool")


source_option = click.option("--source", "source", required=True, envvar="DRTOOL_SOURCE", metavar="NAME",
                             help="Source name (the [sources.NAME] table; also DRTOOL_SOURCE).",
                             shell_complete=source_names)


WAL_TIMEOUT = 120.0


BINLOG_TIMEOUT = 900.0


timeout_option = click.option(
    "--timeout", "timeout", metavar="DURATION", default=None,
    help="Give up after this long (default: log_timeout of the source's table, else 120s for WAL, "
         "15m for binlog-push): a hung run must not block the database's archiver forever.")


def timeout_seconds(state: CliState, source: str, value: str | None, default: float = WAL_TIMEOUT) -> float:
    from drtool.api.settings import parse_duration
    text = value or source_table(state, source).get("log_timeout")
    if not text:
        return default
    seconds = parse_duration(str(text)).total_seconds()
    if seconds <= 0:
        raise UsageError(f"--timeout must be positive, not {text!r}")
    return seconds


@contextmanager
def deadline(seconds: float, what: str, exit_code: int) -> Iterator[None]:
    """End the process with ``exit_code`` if the block runs longer than ``seconds``.

    A thread, not a signal: a hang inside C code (a stalled socket, a key
    derivation) never returns to the interpreter to run a signal handler.
    Exiting hard is safe here: every object is put atomically (a killed push
    leaves at most a temporary file that prune removes), and the archiver
    retries a failed push.
    """
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(seconds):
            sys.stderr.write(f"drtool: error: {what} did not finish within {seconds:g}s; giving up "
                             f"(the database retries; see --timeout)\n")
            sys.stderr.flush()
            os._exit(exit_code)

    thread = threading.Thread(target=watchdog, name="deadline", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def source_table(state: CliState, source: str) -> dict[str, Any]:
    table = state.settings.section("sources").get(source, {})
    return table if isinstance(table, dict) else {}


def print_window(window: Any, as_json: bool) -> None:
    lines = [f"source {window.source} ({window.kind}): {window.bases} base(s), {window.segments} archived file(s)"]
    if window.intervals:
        lines += [f"recoverable: {a.astimezone().isoformat()} .. {b.astimezone().isoformat()}"
                  for a, b in window.intervals]
    else:
        lines.append("recoverable: nothing yet (no base with its logs)")
    lines += [f"gap: {g['count']} file(s) missing from {g['first_missing']} (after {g['after']})"
              for g in window.gaps]
    lines += window.unusable or [f"not a usable base: {b.error} (its chain is broken: not counted above; take a "
                                 f"full backup: drtool backup --source {window.source} --full)" for b in window.broken]
    lines += [f"not restorable: {r.start.astimezone().isoformat()} .. {r.end.astimezone().isoformat()}: only "
              f"snapshot(s) {', '.join(b.base.snapshot.short_id for b in r.because)} would reach it, and "
              f"{'it is' if len(r.because) == 1 else 'they are'} not usable ({r.because[-1].error})"
              for r in window.lost]
    emit(window.as_dict(), as_json, "\n".join(lines))
