"""The light part of the door: configuration, passphrases, names and times.

Imported by every command at start-up, so it pulls in nothing heavier than
the configuration reader (no repository, catalog or engines).
"""
from __future__ import annotations

from drtool.backends.registry import is_local_url
from drtool.childenv import kill_running_groups
from drtool.config import Settings, read_passphrase, resolve
from drtool.snapshot.names import display, label_problem
from drtool.snapshot.timeparse import format_duration, parse_duration, parse_point_in_time

__all__ = ["Settings", "display", "format_duration", "is_local_url", "kill_running_groups",
           "label_problem", "parse_duration", "parse_point_in_time", "read_passphrase", "resolve"]
