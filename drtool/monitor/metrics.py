"""Prometheus text exposition for node_exporter's textfile collector.

The file is written to a temporary name in the same directory, fsynced and
renamed over the target, so node_exporter never scrapes half a file.  When
the repository cannot be read a file with ``drtool_repository_up 0`` is still
written: an alert on stale or missing metrics is weaker than an explicit 0.

Metrics (labels: ``name`` = snapshot series):

    drtool_repository_up                      1 if the repository could be read
    drtool_metrics_timestamp_seconds          when this file was generated
    drtool_last_success_timestamp_seconds     time of the newest snapshot
    drtool_snapshot_size_bytes                size of the newest snapshot
    drtool_bytes_added                        bytes the newest snapshot added
    drtool_backup_duration_seconds            how long the newest backup took
    drtool_rpo_seconds                        data-loss window if disaster struck now
    drtool_rehearsal_success                  1/0 for the last rehearsal (absent if none)
    drtool_rehearsal_last_pass_timestamp_seconds   last passing rehearsal (absent if none)
    drtool_rehearsal_last_fail_timestamp_seconds   last failing rehearsal (absent if none)
    drtool_rehearsal_due_timestamp_seconds    when a passing rehearsal is next due (rehearse_every)
    drtool_rehearsal_overdue                  1 if no passing rehearsal within rehearse_every
    drtool_snapshots                          number of snapshots in the series
    drtool_status                             Nagios state of the series (0..3)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from drtool.errors import DrtoolError
from drtool.monitor.status import StatusReport
from drtool.snapshot.coverage import Coverage

_HELP = {
    "drtool_repository_up": "1 if the repository could be opened and read, else 0.",
    "drtool_metrics_timestamp_seconds": "Unix time at which these metrics were generated.",
    "drtool_last_success_timestamp_seconds": "Unix time of the newest snapshot of the series.",
    "drtool_snapshot_size_bytes": "Logical size of the newest snapshot of the series.",
    "drtool_bytes_added": "Bytes stored in the repository by the newest snapshot.",
    "drtool_backup_duration_seconds": "Duration of the backup that made the newest snapshot.",
    "drtool_rpo_seconds": "Seconds of data that would be lost if disaster struck now.",
    "drtool_rehearsal_success": "1 if the last restore rehearsal succeeded, 0 if it failed.",
    "drtool_rehearsal_last_pass_timestamp_seconds": "Unix time of the last passing rehearsal of the source.",
    "drtool_rehearsal_last_fail_timestamp_seconds": "Unix time of the last failing rehearsal of the source.",
    "drtool_rehearsal_due_timestamp_seconds": "Unix time by which the next passing rehearsal is due "
                                              "(last pass + rehearse_every).",
    "drtool_rehearsal_overdue": "1 if the source has no passing rehearsal within its rehearse_every "
                                "(or none ever), else 0; absent without rehearse_every.",
    "drtool_snapshots": "Number of snapshots in the series.",
    "drtool_status": "Nagios-style state of the series: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))


def render(report: StatusReport) -> str:
    """The exposition text for one status report (HELP/TYPE once per family)."""
    samples: dict[str, list[tuple[str | None, float]]] = {k: [] for k in _HELP}
    samples["drtool_repository_up"].append((None, 0 if report.error else 1))
    samples["drtool_metrics_timestamp_seconds"].append((None, round(report.now.timestamp(), 3)))
    for s in report.sources:
        samples["drtool_status"].append((s.name, s.state))
        samples["drtool_snapshots"].append((s.name, s.snapshots))
        if s.newest is not None:
            summary = s.newest.summary
            samples["drtool_last_success_timestamp_seconds"].append(
                (s.name, round(s.newest.time.timestamp(), 3)))
            samples["drtool_snapshot_size_bytes"].append((s.name, int(summary.get("size", 0))))
            samples["drtool_bytes_added"].append((s.name, int(summary.get("bytes_added", 0))))
            samples["drtool_backup_duration_seconds"].append((s.name, float(summary.get("duration", 0))))
        if s.rpo is not None:
            samples["drtool_rpo_seconds"].append((s.name, round(s.rpo.total_seconds(), 3)))
        if s.rehearsal and isinstance(s.rehearsal.get("success"), bool):
            samples["drtool_rehearsal_success"].append((s.name, 1 if s.rehearsal["success"] else 0))
        _coverage_samples(samples, s.name, s.coverage)
    lines = []
    for family, values in samples.items():
        if not values:
            continue
        lines.append(f"# HELP {family} {_HELP[family]}")
        lines.append(f"# TYPE {family} gauge")
        for name, value in values:
            label = "" if name is None else f'{{name="{_escape(name)}"}}'
            lines.append(f"{family}{label} {_number(value)}")
    return "\n".join(lines) + "\n"


def _coverage_samples(samples: dict[str, list[tuple[str | None, float]]], name: str,
                      coverage: Coverage | None) -> None:
    if coverage is None:
        return
    for family, when in (("drtool_rehearsal_last_pass_timestamp_seconds", coverage.last_pass),
                         ("drtool_rehearsal_last_fail_timestamp_seconds", coverage.last_fail),
                         ("drtool_rehearsal_due_timestamp_seconds", coverage.due)):
        if when is not None:
            samples[family].append((name, round(when.timestamp(), 3)))
    if coverage.every is not None:
        samples["drtool_rehearsal_overdue"].append((name, 1 if coverage.needs_attention else 0))


def write_textfile(path: str, text: str) -> None:
    """Atomically replace ``path`` (temp file in the same directory, fsync, rename)."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise DrtoolError(f"cannot write metrics into {target.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # node_exporter usually runs as another user
        os.replace(tmp, target)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise DrtoolError(f"cannot write metrics file {target}: {exc.strerror}") from None
