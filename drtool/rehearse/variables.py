"""Runbook variables: ``[variables]`` defaults, ``${name}`` placeholders, ``rehearse --set``.

Shipped runbooks name series and databases (``media``, ``db/wiki``); every
site that names them differently used to edit a copy, which then drifted
from the shipped one.  A runbook declares what may differ, with defaults,
and a run overrides them on the command line.  Only lower-case names are
placeholders: ``${UPPER}`` and ``$VAR`` belong to the shell of ``command``
validations and are left alone; ``$$`` is a literal ``$``.
"""
from __future__ import annotations

import re
import tomllib
from typing import Any, Callable, Union

from drtool.errors import UsageError

PathKey = tuple[Union[str, int], ...]
ErrorAt = Callable[[PathKey, str], UsageError]  # names file, line and key

NAME = re.compile(r"[a-z][a-z0-9_]*")
PLACEHOLDER = re.compile(r"\$\$|\$\{([a-z][a-z0-9_]*)\}")


def declared_values(table: Any, overrides: dict[str, str], path: str, error: ErrorAt) -> dict[str, str]:
    """The ``[variables]`` defaults with ``overrides`` applied; an override the runbook does
    not declare is an error (a typo must not run the default silently)."""
    if not isinstance(table, dict):
        raise error(("variables",), 'must be a table of name = "default"')
    values: dict[str, str] = {}
    for name, default in table.items():
        if not NAME.fullmatch(name):
            raise error(("variables", name), "variable names are lower-case letters, digits and _")
        if not isinstance(default, str):
            raise error(("variables", name), f"must be a string (the default value), got {default!r}")
        values[name] = default
    for name, given in overrides.items():
        if name not in values:
            raise UsageError(f"{path}: --set {name}: the runbook has no variable {name!r} "
                             f"(its [variables]: {', '.join(sorted(values)) or 'none'})")
        values[name] = given
    return values


def substitute(key: PathKey, value: Any, variables: dict[str, str], error: ErrorAt) -> Any:
    """``${name}`` → the variable's value in every string under ``value``."""
    if isinstance(value, dict):
        return {k: substitute(key + (k,), v, variables, error) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(key + (i,), v, variables, error) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        if name not in variables:
            declared = f" (declared: {', '.join(sorted(variables))})" if variables else ""
            raise error(key, f"${{{name}}} is not declared in [variables]{declared}")
        return variables[name]
    return PLACEHOLDER.sub(replace, value)


def declared_names(text: str) -> list[str]:
    """The variable names a runbook's text declares (none when it is not valid TOML: parsing
    it properly reports that with its position)."""
    try:
        table = tomllib.loads(text).get("variables", {})
    except tomllib.TOMLDecodeError:
        return []
    return list(table) if isinstance(table, dict) else []


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` strings (``--set``) as a dict."""
    values: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not NAME.fullmatch(name.strip()):
            raise UsageError(f"--set {item!r}: expected NAME=VALUE with a lower-case variable name",
                             hint="e.g. --set source=db/wiki")
        values[name.strip()] = value
    return values
