"""Keeping a repository healthy: forget, prune, check, catalog rebuild, copy to a second site."""
from __future__ import annotations

from drtool.core.session import Session
from drtool.maintain import check as _check
from drtool.maintain import rebuild as _rebuild
from drtool.maintain.copy import CopyOptions, check_apart, copy_snapshots, open_destination, summary_line
from drtool.maintain.forget import ForgetResult, config_policy, forget, forget_ids, zone_from_config
from drtool.maintain.prune import DEFAULT_GRACE, DEFAULT_MAX_UNUSED, PruneOptions, PruneReport, prune
from drtool.maintain.subset import DataSubset
from drtool.snapshot.retention import RetentionPolicy

__all__ = ["CopyOptions", "DataSubset", "DEFAULT_GRACE", "DEFAULT_MAX_UNUSED", "ForgetResult", "PruneOptions", "PruneReport",
           "RetentionPolicy", "check", "check_apart", "config_policy", "copy_snapshots", "forget", "forget_ids",
           "open_destination", "prune", "rebuild_catalog", "summary_line", "zone_from_config"]


def check(session: Session, read: DataSubset | float | None = None, seed: int | None = None) -> _check.CheckReport:
    """``read``: the packs to download and verify besides the structure (``DataSubset.parse``); a
    number is the share of packs, as before 7 December (1.0 every pack, 0 none)."""
    if isinstance(read, (int, float)):
        read = DataSubset(percent=min(read, 1.0) * 100) if read > 0 else None
    return _check.check(session, read, seed)


def rebuild_catalog(session: Session) -> _rebuild.RebuildResult:
    return _rebuild.rebuild_catalog(session)
