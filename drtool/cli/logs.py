"""Logging on stderr, as text or JSON lines (journald / log shippers)."""
from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.created)),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        data.update(getattr(record, "fields", {}))
        return json.dumps(data)


def setup_logging(verbose: int, log_format: str) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("drtool: %(levelname)s: %(message)s"))
    root = logging.getLogger("drtool")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
