"""What monitoring reads: status, Prometheus metrics, failure notifications, backend validation."""
from __future__ import annotations

from drtool.monitor.metrics import render as render_metrics
from drtool.monitor.metrics import write_textfile
from drtool.monitor.notify import notify_failure
from drtool.monitor.status import StatusReport, collect as collect_status, unknown as unknown_status
from drtool.monitor.validate import CheckResult, validate_backend

__all__ = ["CheckResult", "StatusReport", "collect_status", "notify_failure", "render_metrics",
           "unknown_status", "validate_backend", "write_textfile"]
