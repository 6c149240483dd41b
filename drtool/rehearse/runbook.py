"""Rehearsal runbooks: TOML files that say what to restore, where, and how to
prove it worked (see docs/rehearsals.md for the format).

Runbooks are written by people and read by a cron job months later, so every
mistake is reported as one line naming the file, the LINE and the key
(``runbooks/x.toml:12: steps[1].validations[0].min: must be a number``).
``tomllib`` keeps no positions, so :class:`KeyLines` re-scans the text and maps
every key path -- including arrays of tables and inline tables -- to its line.
Parsing is pure: durations are checked here, times are resolved at run time
against the injected clock.
"""
from __future__ import annotations

import bisect
import os
import tomllib
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Union

from drtool.errors import UsageError
from drtool.rehearse.variables import declared_names, declared_values, substitute
from drtool.snapshot.timeparse import parse_duration, parse_point_in_time, system_local_zone

PathKey = tuple[Union[str, int], ...]

SANDBOX_TYPES = ("directory", "postgresql", "mariadb")
DB_SANDBOXES = ("postgresql", "mariadb")
CHECK_TYPES = ("sql", "files", "sample", "command")
POINT_KEYS = ("latest", "random_within", "point_in_time")
STEP_KEYS = {"name", "source", "sandbox", "validations", "objectives", "shards", *POINT_KEYS}
TOP_KEYS = STEP_KEYS | {"description", "seed", "steps", "variables"}
SANDBOX_KEYS = {"directory": {"type", "path"},
                "postgresql": {"type", "path", "database"},
                "mariadb": {"type", "path", "database"}}
CHECK_KEYS = {"sql": {"query", "expect", "min", "max", "database"},
              "files": {"tolerance"},
              "sample": {"count"},
              "command": {"run", "timeout"}}
DEFAULT_COMMAND_TIMEOUT = "10m"
DEFAULT_SAMPLE = 10
_FAR_FUTURE = datetime(9000, 1, 1, tzinfo=timezone.utc)
UNSET: Any = object()


# ----- the model ------------------------------------------------------------------
@dataclass(frozen=True)
class RecoveryPoint:
    """Which moment to recover: the newest data, a random moment, or a fixed one."""

    mode: str = "latest"
    window: timedelta | None = None
    when: str | datetime | None = None

    def describe(self) -> str:
        if self.mode == "random_within":
            from drtool.snapshot.timeparse import format_duration
            return f"random within {format_duration(self.window or timedelta())}"
        if self.mode == "point_in_time":
            when = self.when if isinstance(self.when, str) else self.when.isoformat(timespec="seconds")
            return f"point in time {when}"
        return "latest"


@dataclass
class Check:
    """One validation of a restored sandbox; ``where`` is "file:line" for messages."""

    type: str
    name: str
    where: str
    query: str = ""
    expect: Any = UNSET
    min: float | None = None
    max: float | None = None
    database: str | None = None
    tolerance: float = 0.0
    count: int = DEFAULT_SAMPLE
    run: str | list[str] = ""
    timeout: float = 600.0


@dataclass
class SandboxSpec:
    type: str = "directory"
    path: str | None = None
    database: str | None = None


@dataclass
class Objectives:
    rto: timedelta | None = None
    rpo: timedelta | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"rto": self.rto.total_seconds() if self.rto is not None else None,
                "rpo": self.rpo.total_seconds() if self.rpo is not None else None}


@dataclass
class Step:
    name: str
    source: str
    point: RecoveryPoint
    sandbox: SandboxSpec
    checks: list[Check] = field(default_factory=list)
    objectives: Objectives = field(default_factory=Objectives)
    where: str = ""
    shards: int | None = None  # a sharded source: restore this many of the set's shards, drawn at random


@dataclass
class Runbook:
    path: str
    name: str
    description: str
    steps: list[Step]
    objectives: Objectives
    seed: int | None = None
    variables: dict[str, str] = field(default_factory=dict)  # the values this run used


# ----- key → line map -------------------------------------------------------------
class KeyLines:
    """Line numbers of TOML keys, found by scanning the (already valid) text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        self.found: dict[PathKey, int] = {}
        self.arrays: dict[PathKey, int] = {}
        self._scan()

    def line(self, path: PathKey) -> int:
        """The line of ``path``, or of its nearest recorded ancestor (1 for the root)."""
        for cut in range(len(path), 0, -1):
            if path[:cut] in self.found:
                return self.found[path[:cut]]
        return 1

    def _line_at(self, pos: int) -> int:
        return bisect.bisect_right(self.starts, pos)

    def _record(self, path: PathKey, pos: int) -> None:
        self.found.setdefault(path, self._line_at(pos))

    def _scan(self) -> None:
        table: PathKey = ()
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text):
                return
            start = self.pos
            if self.text.startswith("[[", self.pos):
                self.pos += 2
                keys = self._key()
                parent = self._concrete(keys[:-1])
                base = parent + (keys[-1],)
                index = self.arrays.get(base, -1) + 1
                self.arrays[base] = index
                table = base + (index,)
                self._record(base, start)
                self._record(table, start)
            elif self.text[self.pos] == "[":
                self.pos += 1
                table = self._concrete(self._key())
                self._record(table, start)
            else:
                path = table + self._key()
                self._record(path, start)
                self._expect("=")
                self._value(path)
            self._to_line_end()

    def _concrete(self, keys: PathKey) -> PathKey:
        """Resolve a header's keys: an array of tables means its latest element."""
        path: PathKey = ()
        for key in keys:
            path = path + (key,)
            if path in self.arrays:
                path = path + (self.arrays[path],)
        return path

    def _skip(self, newlines: bool) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self.pos += 1
            elif ch == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _to_line_end(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def _expect(self, char: str) -> None:
        self._skip(newlines=False)
        if self.text.startswith(char, self.pos):
            self.pos += len(char)
        self._skip(newlines=False)

    def _key(self) -> PathKey:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            ch = self.text[self.pos:self.pos + 1]
            if ch in ('"', "'"):
                start = self.pos
                self._string()
                parts.append(tomllib.loads("k = " + self.text[start:self.pos])["k"])
            else:
                start = self.pos
                while self.pos < len(self.text) and (self.text[self.pos].isalnum()
                                                     or self.text[self.pos] in "_-"):
                    self.pos += 1
                parts.append(self.text[start:self.pos])
            self._skip(newlines=False)
            if not self.text.startswith(".", self.pos):
                break
            self.pos += 1
        while self.text[self.pos:self.pos + 1] == "]":
            self.pos += 1
        return tuple(parts)

    def _string(self) -> None:
        text, quote = self.text, self.text[self.pos]
        if text.startswith(quote * 3, self.pos):
            end = self._find_close(quote * 3, self.pos + 3, escapes=quote == '"')
            self.pos = end + 3
            while text[self.pos:self.pos + 1] == quote:
                self.pos += 1
            return
        self.pos = self._find_close(quote, self.pos + 1, escapes=quote == '"') + 1

    def _find_close(self, closer: str, pos: int, escapes: bool) -> int:
        while True:
            end = self.text.find(closer, pos)
            if end < 0:
                return len(self.text)
            backslashes = 0
            while escapes and self.text[end - 1 - backslashes] == "\\":
                backslashes += 1
            if backslashes % 2 == 0:
                return end
            pos = end + 1

    def _value(self, path: PathKey) -> None:
        self._skip(newlines=False)
        ch = self.text[self.pos:self.pos + 1]
        if ch in ('"', "'"):
            self._string()
        elif ch == "[":
            self._array(path)
        elif ch == "{":
            self._inline_table(path)
        else:
            while self.pos < len(self.text) and self.text[self.pos] not in ",]}\n#":
                self.pos += 1

    def _array(self, path: PathKey) -> None:
        self.pos += 1
        index = 0
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text) or self.text[self.pos] == "]":
                self.pos += 1
                return
            self._record(path + (index,), self.pos)
            self._value(path + (index,))
            self._skip(newlines=True)
            if self.text[self.pos:self.pos + 1] == ",":
                self.pos += 1
                index += 1

    def _inline_table(self, path: PathKey) -> None:
        self.pos += 1
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text) or self.text[self.pos] == "}":
                self.pos += 1
                return
            start = self.pos
            sub = path + self._key()
            self._record(sub, start)
            self._expect("=")
            self._value(sub)
            self._skip(newlines=True)
            if self.text[self.pos:self.pos + 1] == ",":
                self.pos += 1


# ----- validation -----------------------------------------------------------------
def dotted(path: PathKey) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Ctx:
    """Where we are in which file, so every error can name file, line and key."""

    def __init__(self, path: str, lines: KeyLines) -> None:
        self.path = path
        self.lines = lines

    def where(self, key: PathKey) -> str:
        return f"{self.path}:{self.lines.line(key)}"

    def error(self, key: PathKey, message: str) -> UsageError:
        return UsageError(f"{self.where(key)}: {dotted(key)}: {message}")


def _type_name(value: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _want(ctx: _Ctx, key: PathKey, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ctx.error(key, f"must be {what}, got {_type_name(value)}")
    if not isinstance(value, kind):
        raise ctx.error(key, f"must be {what}, got {_type_name(value)} ({value!r})")
    return value


def _table(ctx: _Ctx, key: PathKey, value: Any, allowed: set[str]) -> dict[str, Any]:
    table = _want(ctx, key, value, dict, "a table")
    for name in table:
        if name not in allowed:
            raise ctx.error(key + (name,), f"unknown key; expected one of {', '.join(sorted(allowed))}")
    return table


def _duration(ctx: _Ctx, key: PathKey, value: Any) -> timedelta:
    text = _want(ctx, key, value, str, 'a duration such as "15m" or "26h"')
    try:
        result = parse_duration(text)
    except UsageError as exc:
        raise ctx.error(key, str(exc)) from None
    if result <= timedelta(0):
        raise ctx.error(key, "must be longer than 0s")
    return result


def _objectives(ctx: _Ctx, key: PathKey, value: Any) -> Objectives:
    table = _table(ctx, key, value, {"rto", "rpo"})
    return Objectives(*(_duration(ctx, key + (k,), table[k]) if k in table else None
                        for k in ("rto", "rpo")))


def _point(ctx: _Ctx, key: PathKey, table: dict[str, Any]) -> RecoveryPoint:
    given = [k for k in POINT_KEYS if k in table]
    if len(given) > 1:
        raise ctx.error(key + (given[1],), f"give only one recovery point: {' or '.join(POINT_KEYS)} "
                                           f"(also set: {given[0]})")
    if not given or given[0] == "latest":
        if given and table["latest"] is not True:
            raise ctx.error(key + ("latest",), "must be true (or leave it out)")
        return RecoveryPoint()
    name = given[0]
    if name == "random_within":
        return RecoveryPoint(name, window=_duration(ctx, key + (name,), table[name]))
    return RecoveryPoint(name, when=_point_in_time(ctx, key + (name,), table[name]))


def _point_in_time(ctx: _Ctx, key: PathKey, value: Any) -> str | datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=system_local_zone())
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=system_local_zone())
    text = _want(ctx, key, value, str, "a time such as 2026-11-20T14:05:00Z")
    try:
        parse_point_in_time(text, now=_FAR_FUTURE)
    except UsageError as exc:
        raise ctx.error(key, str(exc)) from None
    return text


def _sandbox(ctx: _Ctx, key: PathKey, value: Any) -> SandboxSpec:
    table = _want(ctx, key, value, dict, "a table")
    kind = table.get("type")
    if kind is None:
        raise ctx.error(key, f"missing key 'type' ({' | '.join(SANDBOX_TYPES)})")
    if kind not in SANDBOX_TYPES:
        raise ctx.error(key + ("type",), f"unknown sandbox type {kind!r}; expected one of "
                                         f"{', '.join(SANDBOX_TYPES)}")
    _table(ctx, key, table, SANDBOX_KEYS[kind])
    strings = {k: _want(ctx, key + (k,), table[k], str, "a string")
               for k in ("path", "database") if k in table}
    return SandboxSpec(kind, **strings)


def _number(ctx: _Ctx, key: PathKey, table: dict[str, Any], name: str) -> float | None:
    if name not in table:
        return None
    return float(_want(ctx, key + (name,), table[name], (int, float), "a number"))


def _tolerance(ctx: _Ctx, key: PathKey, value: Any) -> float:
    text = _want(ctx, key, value, str, 'a percentage such as "1%"')
    try:
        if not text.strip().endswith("%"):
            raise ValueError
        result = float(text.strip()[:-1]) / 100
    except ValueError:
        raise ctx.error(key, f'must be a percentage such as "1%", got {text!r}') from None
    if not 0 <= result <= 1:
        raise ctx.error(key, "must be between 0% and 100%")
    return result


def _check(ctx: _Ctx, key: PathKey, value: Any, sandbox: SandboxSpec) -> Check:
    table = _want(ctx, key, value, dict, "a table")
    kind = table.get("type")
    if kind is None:
        raise ctx.error(key, f"missing key 'type' ({' | '.join(CHECK_TYPES)})")
    if kind not in CHECK_TYPES:
        raise ctx.error(key + ("type",), f"unknown validation type {kind!r}; expected one of "
                                         f"{', '.join(CHECK_TYPES)}")
    _table(ctx, key, table, CHECK_KEYS[kind] | {"type", "name"})
    name = _want(ctx, key + ("name",), table.get("name", ""), str, "a string")
    check = Check(kind, name, ctx.where(key))
    if kind == "sql":
        _sql_check(ctx, key, table, sandbox, check)
    elif kind == "files":
        check.tolerance = _tolerance(ctx, key + ("tolerance",), table.get("tolerance", "0%"))
    elif kind == "sample":
        check.count = _want(ctx, key + ("count",), table.get("count", DEFAULT_SAMPLE), int, "an integer")
        if check.count < 1:
            raise ctx.error(key + ("count",), "must be at least 1")
    else:
        _command_check(ctx, key, table, check)
    check.name = check.name or _default_name(check)
    return check


def _sql_check(ctx: _Ctx, key: PathKey, table: dict[str, Any], sandbox: SandboxSpec,
               check: Check) -> None:
    if sandbox.type not in DB_SANDBOXES:
        raise ctx.error(key + ("type",), f"sql validations need a postgresql or mariadb sandbox "
                                         f"(this sandbox is {sandbox.type!r})")
    if "query" not in table:
        raise ctx.error(key, "missing key 'query'")
    check.query = _want(ctx, key + ("query",), table["query"], str, "a string")
    check.min, check.max = _number(ctx, key, table, "min"), _number(ctx, key, table, "max")
    check.expect = table.get("expect", UNSET)
    if check.expect is UNSET and check.min is None and check.max is None:
        raise ctx.error(key, "give 'expect', 'min' or 'max' for the query's result")
    if check.min is not None and check.max is not None and check.min > check.max:
        raise ctx.error(key + ("max",), f"max ({check.max:g}) is below min ({check.min:g})")
    if "database" in table:
        check.database = _want(ctx, key + ("database",), table["database"], str, "a string")


def _command_check(ctx: _Ctx, key: PathKey, table: dict[str, Any], check: Check) -> None:
    if "run" not in table:
        raise ctx.error(key, "missing key 'run' (a shell command, or an array of arguments)")
    run = table["run"]
    if isinstance(run, list):
        if not run or not all(isinstance(a, str) for a in run):
            raise ctx.error(key + ("run",), "must be a non-empty array of strings")
    elif not isinstance(run, str) or not run.strip():
        raise ctx.error(key + ("run",), "must be a shell command string or an array of strings")
    check.run = run
    check.timeout = _duration(ctx, key + ("timeout",),
                              table.get("timeout", DEFAULT_COMMAND_TIMEOUT)).total_seconds()


def _default_name(check: Check) -> str:
    if check.type == "sql":
        return "sql: " + " ".join(check.query.split())[:60]
    if check.type == "files":
        return f"file count and size within {check.tolerance * 100:g}% of the manifest"
    if check.type == "sample":
        return f"re-hash a sample of {check.count} file(s)"
    text = check.run if isinstance(check.run, str) else " ".join(check.run)
    return "command: " + " ".join(text.split())[:60]


def _step(ctx: _Ctx, key: PathKey, table: dict[str, Any], default_name: str) -> Step:
    if "source" not in table:
        raise ctx.error(key, "missing key 'source' (a configured source or snapshot series name)")
    source = _want(ctx, key + ("source",), table["source"], str, "a string")
    if not source.strip():
        raise ctx.error(key + ("source",), "must not be empty")
    name = _want(ctx, key + ("name",), table.get("name", default_name), str, "a string")
    sandbox = _sandbox(ctx, key + ("sandbox",), table.get("sandbox", {"type": "directory"}))
    raw_checks = _want(ctx, key + ("validations",), table.get("validations", []), list,
                       "an array of tables ([[validations]])")
    checks = [_check(ctx, key + ("validations", i), c, sandbox) for i, c in enumerate(raw_checks)]
    objectives = _objectives(ctx, key + ("objectives",), table.get("objectives", {}))
    shards = _want(ctx, key + ("shards",), table["shards"], int, "an integer") if "shards" in table else None
    if shards is not None and shards < 1:
        raise ctx.error(key + ("shards",), "must be at least 1 (leave it out to restore every shard)")
    return Step(name, source, _point(ctx, key, table), sandbox, checks, objectives, ctx.where(key), shards)


def parse_runbook(text: str, path: str, overrides: dict[str, str] | None = None) -> Runbook:
    """Parse and validate a runbook; raise UsageError naming file, line and key.

    ``overrides`` (``rehearse --set NAME=VALUE``) replace the defaults of the runbook's
    ``[variables]``; every ``${name}`` in a string value is replaced by its value, so
    one runbook serves every site without edited copies."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    ctx = _Ctx(path, KeyLines(text))
    _table(ctx, (), data, TOP_KEYS)
    variables = declared_values(data.get("variables", {}), overrides or {}, ctx.path, ctx.error)
    data = {k: (v if k == "variables" else substitute((k,), v, variables, ctx.error)) for k, v in data.items()}
    stem = os.path.splitext(os.path.basename(path))[0]
    name = _want(ctx, ("name",), data.get("name", stem), str, "a string")
    description = _want(ctx, ("description",), data.get("description", ""), str, "a string")
    seed = _want(ctx, ("seed",), data["seed"], int, "an integer") if "seed" in data else None
    objectives = _objectives(ctx, ("objectives",), data.get("objectives", {}))
    return Runbook(path, name, description, _steps(ctx, data, name), objectives, seed, variables)


def _steps(ctx: _Ctx, data: dict[str, Any], name: str) -> list[Step]:
    if "steps" not in data:
        if "source" not in data:
            raise ctx.error(("source",), "missing key 'source' (or use [[steps]] for several restores)")
        single = {k: v for k, v in data.items() if k in STEP_KEYS and k != "name"}
        return [_step(ctx, (), single, name)]
    stray = [k for k in STEP_KEYS - {"name", "objectives"} if k in data]
    if stray:
        raise ctx.error((stray[0],), "with [[steps]], put source, recovery point, sandbox and "
                                     "validations inside each step")
    raw = _want(ctx, ("steps",), data["steps"], list, "an array of tables ([[steps]])")
    if not raw:
        raise ctx.error(("steps",), "needs at least one step")
    steps = []
    for i, item in enumerate(raw):
        table = _table(ctx, ("steps", i), item, STEP_KEYS)
        steps.append(_step(ctx, ("steps", i), table, f"step{i + 1}"))
    seen: set[str] = set()
    for i, step in enumerate(steps):
        if step.name in seen:
            raise ctx.error(("steps", i, "name"), f"duplicate step name {step.name!r}")
        seen.add(step.name)
    return steps


def load_runbooks(paths: list[str], overrides: dict[str, str]) -> list[Runbook]:
    """Every runbook, each given the ``--set`` values it declares; a value no runbook
    declares is an error (a typo must not run the default silently)."""
    texts = [(path, _read(path)) for path in paths]
    declared = {path: set(declared_names(text)) for path, text in texts}
    unused = sorted(set(overrides) - set().union(*declared.values()))
    if unused:
        raise UsageError(f"--set {unused[0]}: no runbook given declares a variable {unused[0]!r}",
                         hint="see the [variables] table of the runbook")
    return [parse_runbook(text, path, {k: v for k, v in overrides.items() if k in declared[path]})
            for path, text in texts]


def load_runbook(path: str) -> Runbook:
    return parse_runbook(_read(path), path)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise UsageError(f"runbook {path} does not exist", hint="see runbooks/*.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"runbook {path} cannot be read: {exc}") from None
