"""Telling people: failure notifications and the one-line backup summary log.

``on_failure = { command = "...", webhook = "https://..." }`` in the config
runs a command and/or POSTs JSON when a command fails, so a broken nightly
backup pages someone even where nobody reads cron mail.  Notification is best
effort by design: a failing notifier is reported on the log and must never
replace or hide the original error (or its exit code).

The command runs through the shell with the JSON body on stdin and the same
facts in ``DRTOOL_FAILED_COMMAND``, ``DRTOOL_ERROR``, ``DRTOOL_EXIT_CODE``
and ``DRTOOL_HOST``; the webhook receives the JSON body::

    {"command": "backup", "error": "...", "exit_code": 1, "host": "db1", "time": "..."}
"""
from __future__ import annotations

import json
import logging
import socket
import subprocess
from datetime import datetime, timezone
from typing import Any, Mapping

from drtool.childenv import child_environment

log = logging.getLogger("drtool.notify")

DEFAULT_TIMEOUT = 30.0


def failure_payload(command: str, error_text: str, exit_code: int,
                    host: str | None = None) -> dict[str, Any]:
    return {"command": command, "error": error_text, "exit_code": int(exit_code),
            "host": host or socket.gethostname(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def notify_failure(settings_data: Mapping[str, Any], command: str, error_text: str,
                   exit_code: int, host: str | None = None) -> list[str]:
    """Run the configured ``on_failure`` actions; return problems (never raises)."""
    table = settings_data.get("on_failure")
    if not table:
        return []
    if not isinstance(table, dict):
        return _problems(["config: on_failure must be a table such as "
                          "{ command = \"...\", webhook = \"https://...\" }"])
    host = host or (settings_data.get("host") if isinstance(settings_data.get("host"), str) else None)
    payload = failure_payload(command, error_text, exit_code, host)
    timeout = float(table.get("timeout", DEFAULT_TIMEOUT))
    problems: list[str] = []
    if table.get("command"):
        problems += _run_command(str(table["command"]), payload, timeout)
    if table.get("webhook"):
        problems += _post_webhook(str(table["webhook"]), payload, timeout)
    return _problems(problems)


def _problems(problems: list[str]) -> list[str]:
    for problem in problems:
        log.warning("failure notification: %s", problem)
    return problems


def _run_command(command: str, payload: dict[str, Any], timeout: float) -> list[str]:
    env = child_environment({"DRTOOL_FAILED_COMMAND": payload["command"], "DRTOOL_ERROR": payload["error"],
                             "DRTOOL_EXIT_CODE": str(payload["exit_code"]), "DRTOOL_HOST": payload["host"]})
    try:
        proc = subprocess.run(command, shell=True, input=json.dumps(payload).encode(), env=env,
                              capture_output=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"on_failure command could not run: {exc}"]
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return [f"on_failure command exited with status {proc.returncode}: {tail[0][:200]}"]
    return []


def _post_webhook(url: str, payload: dict[str, Any], timeout: float) -> list[str]:
    import urllib.error  # only here: urllib.request and its ssl/http/email cost every command ~40 ms
    import urllib.request
    if not url.startswith(("http://", "https://")):
        return [f"on_failure webhook {url!r} is not an http(s) URL"]
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "drtool"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only
            response.read()
    except urllib.error.HTTPError as exc:
        return [f"on_failure webhook answered HTTP {exc.code}"]
    except (urllib.error.URLError, OSError) as exc:
        return [f"on_failure webhook failed: {getattr(exc, 'reason', exc)}"]
    return []


def backup_summary_fields(result: Any) -> dict[str, Any]:
    """Structured fields of a finished backup (for ``--log-format json``)."""
    snap = result.snapshot
    s = snap.summary
    return {"event": "backup", "snapshot": snap.id, "name": snap.name, "host": snap.host,
            "kind": snap.kind, "files": s.get("files", 0), "size": s.get("size", 0),
            "bytes_added": s.get("bytes_added", 0), "duration": s.get("duration", 0.0),
            "unreadable": len(getattr(result, "unreadable", []) or []),
            "requests": getattr(result, "requests", {})}


def log_backup_summary(result: Any, logger: logging.Logger | None = None) -> None:
    """One INFO line per backup; JSON logs carry every field for log shippers."""
    fields = backup_summary_fields(result)
    (logger or logging.getLogger("drtool.backup")).info(
        "backup %s: snapshot %s, %d files, %d bytes, %d added in %.1fs", fields["name"],
        fields["snapshot"][:8], fields["files"], fields["size"], fields["bytes_added"],
        fields["duration"], extra={"fields": fields})
