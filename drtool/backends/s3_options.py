"""Options of the S3 backend (the ``[s3]`` config table), validated up front.

A typo in a DR configuration must fail the first run loudly, not silently
store unencrypted-at-rest objects or skip Object Lock for a year.  Values may
come from TOML (typed) or from strings (environment, URLs), so numbers and
booleans are coerced here, once.
"""
from __future__ import annotations

from typing import Any, Mapping

from drtool.backends.throttle import parse_rate
from drtool.errors import UsageError

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PARTS = 10_000

INT_OPTIONS: dict[str, int | None] = {
    "object_lock_days": None, "multipart_threshold": 64 * MiB, "multipart_chunksize": 16 * MiB,
    "connections": 4, "max_attempts": 6, "read_attempts": 4, "restore_days": 7}
FLOAT_OPTIONS = {"connect_timeout": 10.0, "read_timeout": 60.0, "read_retry_backoff": 0.2}
STR_OPTIONS = {"endpoint_url", "region", "addressing_style", "storage_class", "sse",
               "sse_kms_key_id", "object_lock_mode", "retry_mode", "restore_tier"}
RATE_OPTIONS = ("limit_upload", "limit_download")  # bytes per second; None = no limit
# Older names still accepted in configs: old -> new.
ALIASES = {"max_connections": "connections"}
KNOWN_OPTIONS = (set(INT_OPTIONS) | set(FLOAT_OPTIONS) | STR_OPTIONS | set(RATE_OPTIONS) | set(ALIASES)
                 | {"create_bucket"})
CHOICES = {"addressing_style": ("auto", "path", "virtual"), "sse": ("AES256", "aws:kms"),
           "object_lock_mode": ("GOVERNANCE", "COMPLIANCE"),
           "retry_mode": ("standard", "adaptive", "legacy"),
           "restore_tier": ("Expedited", "Standard", "Bulk")}
POSITIVE = ("object_lock_days", "multipart_threshold", "connections", "max_attempts", "restore_days",
            "read_attempts")


def parse_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate and coerce; raise UsageError naming the bad option."""
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise UsageError(f"unknown S3 option(s): {', '.join(sorted(unknown))}",
                         hint=f"known options: {', '.join(sorted(KNOWN_OPTIONS))}")
    options = dict(options)
    for old, new in ALIASES.items():
        if old in options:
            if new in options:
                raise UsageError(f"S3 options {old} and {new} are the same setting; give only {new}")
            options[new] = options.pop(old)
    opts: dict[str, Any] = {}
    try:
        for key, default in INT_OPTIONS.items():
            value = options.get(key)
            opts[key] = default if value in (None, "") else int(value)
        for key, fdefault in FLOAT_OPTIONS.items():
            value = options.get(key)
            opts[key] = fdefault if value in (None, "") else float(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"invalid numeric S3 option: {exc}") from None
    for key in STR_OPTIONS:
        value = options.get(key)
        opts[key] = str(value) if value not in (None, "") else None
    for key in RATE_OPTIONS:
        opts[key] = parse_rate(options.get(key), f"--{key.replace('_', '-')} ([s3] {key})")
    flag = options.get("create_bucket", "")
    opts["create_bucket"] = flag is True or str(flag).lower() in ("1", "true", "yes", "on")
    _check_values(opts)
    return opts


def _check_values(opts: dict[str, Any]) -> None:
    def bad(msg: str) -> None:
        raise UsageError(f"invalid S3 option: {msg}")

    if opts["object_lock_mode"]:
        opts["object_lock_mode"] = opts["object_lock_mode"].upper()
    opts["restore_tier"] = (opts["restore_tier"] or "Standard").capitalize()
    for key, allowed in CHOICES.items():
        if opts[key] is not None and opts[key] not in allowed:
            bad(f"{key} must be one of {', '.join(allowed)}")
    if opts["sse_kms_key_id"] and opts["sse"] != "aws:kms":
        bad("sse_kms_key_id requires sse=aws:kms")
    if (opts["object_lock_mode"] is None) != (opts["object_lock_days"] is None):
        bad("object_lock_mode and object_lock_days must be given together")
    for key in POSITIVE:
        if opts[key] is not None and opts[key] < 1:
            bad(f"{key} must be positive")
    if opts["multipart_chunksize"] < MIN_PART:
        bad("multipart_chunksize must be at least 5 MiB (an S3 limit)")


def chunk_size(opts: Mapping[str, Any], size: int) -> int:
    """Part size for an object of ``size`` bytes: the configured size, or more for huge objects."""
    return max(int(opts["multipart_chunksize"]), -(-size // MAX_PARTS))
