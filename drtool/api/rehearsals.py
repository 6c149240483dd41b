"""Restore rehearsals: drills from runbooks, their history and HTML report."""
from __future__ import annotations

from drtool.catalog.rehearsals import rehearsal_history
from drtool.rehearse.drill import RehearsalResult, RehearseOptions, fmt_seconds, rebuild_rehearsals, rehearse
from drtool.rehearse.report import render_html
from drtool.rehearse.runbook import load_runbook, load_runbooks
from drtool.rehearse.variables import parse_assignments

__all__ = ["RehearsalResult", "RehearseOptions", "fmt_seconds", "load_runbook", "load_runbooks",
           "parse_assignments", "rebuild_rehearsals", "rehearsal_history", "rehearse", "render_html"]
