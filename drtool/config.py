"""Settings from options, environment and the optional TOML config file.

Precedence: command-line option, then environment, then config file, then
defaults.  The passphrase is never an option: it comes from DRTOOL_PASSWORD,
DRTOOL_PASSWORD_FILE, DRTOOL_PASSWORD_COMMAND (or the config's
``password_file`` / ``password_command``), or a prompt on a terminal.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from drtool.childenv import child_environment, running_groups
from drtool.errors import ConfigError, UsageError

KNOWN_TOP_KEYS = {"repository", "catalog", "password_file", "password_command", "host",
                  "s3", "sources", "retention", "timezone", "status", "on_failure", "copy",
                  "prune", "lock", "rehearse"}


@dataclass
class Settings:
    repository: str | None = None
    catalog: str | None = None
    host: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    path: str | None = None

    s3_overrides: dict[str, Any] = field(default_factory=dict)  # from options (--limit-upload ...)

    @property
    def backend_options(self) -> dict[str, Any]:
        return {**self.data.get("s3", {}), **self.s3_overrides}

    def override_s3(self, **options: Any) -> None:
        """S3 options given on the command line win over the config's ``[s3]`` table."""
        from drtool.backends.throttle import parse_rate
        for key, value in options.items():
            if value not in (None, ""):  # checked now: a local repository would never look at them
                self.s3_overrides[key] = parse_rate(value, f"--{key.replace('_', '-')}")

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
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at "
                          f"offset {exc.start})", hint="TOML files are UTF-8; re-save it as UTF-8") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
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


PASSWORD_COMMAND_TIMEOUT = 60.0  # seconds; DRTOOL_PASSWORD_COMMAND_TIMEOUT overrides
ALLOW_EMPTY_ENV = "DRTOOL_INSECURE_EMPTY_PASSWORD"


def read_passphrase(settings: Settings, prompt: Callable[[], str] | None,
                    env: dict[str, str] | None = None, new: bool = False) -> bytes:
    """The passphrase from the environment, a file, a command or a prompt, never empty.

    An empty passphrase protects nothing and is almost always a mistake (a
    0-byte file, a command that printed nothing): it is refused.  ``new``
    (a passphrase for a new key slot) never accepts one; opening a
    repository that an older version created with an empty passphrase needs
    ``DRTOOL_INSECURE_EMPTY_PASSWORD=1`` -- then add a real key with
    ``drtool key passwd``.
    """
    env = dict(os.environ) if env is None else env
    if env.get("DRTOOL_PASSWORD"):
        return env["DRTOOL_PASSWORD"].encode()
    file_ = env.get("DRTOOL_PASSWORD_FILE") or settings.password_file
    if file_:
        try:
            value = Path(file_).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read the password file {file_}: {exc.strerror}") from None
        return _not_empty(value, f"the password file {file_}", env, new)
    command = env.get("DRTOOL_PASSWORD_COMMAND") or settings.password_command
    if command:
        return _not_empty(_password_from_command(command, _command_timeout(env)),
                          "the password command's output", env, new)
    if prompt is not None:
        return _not_empty(prompt().encode(), "the passphrase typed", env, new)
    raise UsageError("no passphrase given",
                     hint="set DRTOOL_PASSWORD_FILE or DRTOOL_PASSWORD_COMMAND (or run on a terminal)")


def _not_empty(value: bytes, where: str, env: dict[str, str], new: bool) -> bytes:
    if value:
        return value
    if not new and env.get(ALLOW_EMPTY_ENV) == "1":
        return value
    raise UsageError(f"{where} is empty: an empty passphrase is refused",
                     hint="put the passphrase there" + ("" if new else
                          f" (a repository made with an empty passphrase by an older version opens with "
                          f"{ALLOW_EMPTY_ENV}=1; then set a real one with 'drtool key passwd')"))


def _command_timeout(env: dict[str, str]) -> float:
    raw = env.get("DRTOOL_PASSWORD_COMMAND_TIMEOUT")
    if not raw:
        return PASSWORD_COMMAND_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        raise UsageError(f"DRTOOL_PASSWORD_COMMAND_TIMEOUT={raw!r} is not a number of seconds (1..86400)")
    return value


def _password_from_command(command: str, timeout: float = PASSWORD_COMMAND_TIMEOUT) -> bytes:
    """Run the password command in its own process group, without drtool's secrets, bounded in time.

    On timeout the whole group is killed -- a shell's children too, which
    would otherwise keep the output pipe open and hang drtool.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"the password command cannot be parsed: {exc}") from None
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=child_environment(), start_new_session=True)
    except OSError as exc:
        raise UsageError(f"the password command could not run: {exc.strerror}") from None
    running_groups.add(proc.pid)
    try:
        out, _err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise UsageError(f"the password command did not finish within {timeout:.0f}s and was killed",
                         hint="check the command (a prompt it waits for?); "
                              "DRTOOL_PASSWORD_COMMAND_TIMEOUT sets the limit in seconds") from None
    except BaseException:  # interrupted: the command does not outlive drtool
        _kill_group(proc)
        raise
    finally:
        running_groups.discard(proc.pid)
    if proc.returncode != 0:
        raise UsageError(f"the password command exited with status {proc.returncode}")
    return out.rstrip(b"\r\n")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    proc.wait()
