"""Settings from options, environment and the optional TOML config file.

Precedence: command-line option, then environment, then config file, then
defaults.  The passphrase is never an option: it comes from DRTOOL_PASSWORD,
DRTOOL_PASSWORD_FILE, DRTOOL_PASSWORD_COMMAND (or the config's
``password_file`` / ``password_command``), or a prompt on a terminal.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from drtool.errors import ConfigError, UsageError

KNOWN_TOP_KEYS = {"repository", "catalog", "password_file", "password_command", "host",
                  "s3", "sources", "retention", "timezone", "status", "on_failure", "copy",
                  "prune", "lock"}


@dataclass
class Settings:
    repository: str | None = None
    catalog: str | None = None
    host: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    @property
    def backend_options(self) -> dict[str, Any]:
        return dict(self.data.get("s3", {}))

    def section(self, name: str) -> dict[str, Any]:
        value = self.data.get(name, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.path}: [{name}] must be a table")
        return value


def load_config(path: str | None) -> Settings:
    if not path:
        return Settings()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    unknown = set(data) - KNOWN_TOP_KEYS
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(sorted(unknown))}",
                          hint=f"known keys: {', '.join(sorted(KNOWN_TOP_KEYS))}")
    for key in ("repository", "catalog", "password_file", "password_command", "host"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"config file {path}: {key} must be a string")
    return Settings(data.get("repository"), data.get("catalog"), data.get("host"),
                    data.get("password_file"), data.get("password_command"), data, path)


def resolve(repo_option: str | None, config_option: str | None,
            env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ) if env is None else env
    settings = load_config(config_option or env.get("DRTOOL_CONFIG"))
    settings.repository = repo_option or env.get("DRTOOL_REPOSITORY") or settings.repository
    settings.catalog = env.get("DRTOOL_CATALOG") or settings.catalog
    settings.host = env.get("DRTOOL_HOST") or settings.host
    if settings.repository and settings.path and "://" not in settings.repository:
        base = Path(settings.path).parent
        settings.repository = str((base / settings.repository).resolve())
    return settings


def read_passphrase(settings: Settings, prompt: Callable[[], str] | None,
                    env: dict[str, str] | None = None) -> bytes:
    env = dict(os.environ) if env is None else env
    if env.get("DRTOOL_PASSWORD"):
        return env["DRTOOL_PASSWORD"].encode()
    file_ = env.get("DRTOOL_PASSWORD_FILE") or settings.password_file
    if file_:
        try:
            return Path(file_).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read the password file {file_}: {exc.strerror}") from None
    command = env.get("DRTOOL_PASSWORD_COMMAND") or settings.password_command
    if command:
        return _password_from_command(command)
    if prompt is not None:
        return prompt().encode()
    raise UsageError("no passphrase given",
                     hint="set DRTOOL_PASSWORD_FILE or DRTOOL_PASSWORD_COMMAND (or run on a terminal)")


def _password_from_command(command: str) -> bytes:
    try:
        proc = subprocess.run(shlex.split(command), capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"the password command could not run: {exc}") from None
    if proc.returncode != 0:
        raise UsageError(f"the password command exited with status {proc.returncode}")
    return proc.stdout.rstrip(b"\r\n")
