"""Which names drtool accepts, and how it shows names it would not accept today.

Two kinds of names:

* **Entry names** -- one component of a path inside a snapshot's tree (a
  file, a directory, the ``--filename`` of a stream).  A restore joins them
  under ``--target``, so one that is empty, ``.``, ``..`` or holds ``/`` or
  NUL would create, follow or replace something outside the target.  They
  may be any other bytes (file names need not be UTF-8; they are kept as
  ``os.fsdecode`` strings with surrogate escapes).
* **Labels** -- snapshot series names, tags and host names.  They are shown
  in listings, written to the catalog, to Prometheus metrics and to JSON, so
  they must be printable UTF-8: no control characters, no backslash (kept
  for the escapes below), at most 255 bytes; tags hold no comma.

Both are checked when written (backup) and entry names again when read (a
tree forged by someone holding the key).  A label that an older version
accepted -- for instance a series name that is not valid UTF-8 -- stays
usable: :func:`display` escapes it (``x\\xff``), the catalog stores that
escaped form, and :func:`matches` accepts either form in ``--name``.
"""
from __future__ import annotations

import unicodedata

MAX_LABEL_BYTES = 255


def entry_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one path component inside a target, or None."""
    if type(name) is str and name and "/" not in name and "\0" not in name and name not in (".", ".."):
        return None  # the common case in two scans (every entry of every tree read is checked)
    if not isinstance(name, str):
        return "is not a string"
    if not name:
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}"
    if name.startswith("/"):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "leads out of its directory ('..')"
    if "/" in name:
        return "contains '/'"
    if "\0" in name:
        return "contains a NUL byte"
    return None


def tree_names_problem(names: list[str]) -> str | None:
    """The first bad or duplicated entry name of one directory, described; None when all are fine.

    Duplicates matter: a tree listing ``data`` once as a symbolic link and
    once as a directory would make a naive restore write through the link.
    """
    seen: set[str] = set()
    for name in names:
        problem = entry_name_problem(name)
        if problem is not None:
            shown = display(name) if isinstance(name, str) else repr(name)
            return f"entry name '{shown}' {problem}"
        if name in seen:
            return f"entry name '{display(name)}' appears twice"
        seen.add(name)
    return None


def label_problem(value: object, *, tag: bool = False, series: bool = False) -> str | None:
    """Why ``value`` cannot be a series name (``series``), tag (``tag``) or host name, or None."""
    if not isinstance(value, str):
        return "is not a string"
    if not value or not value.strip():
        return "is empty"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_LABEL_BYTES:
        return f"is longer than {MAX_LABEL_BYTES} bytes"
    for char in value:
        if _needs_escape(char):
            return f"contains the character {_escape_char(char)}"
    if tag and "," in value:
        return "contains ',' (tags are listed comma-separated)"
    if series and any(part in ("", ".", "..") for part in value.split("/")):
        return "has an empty, '.' or '..' part between slashes"
    return None


def display(value: str) -> str:
    """``value`` with everything unprintable escaped; printable labels come back unchanged.

    Surrogate escapes (bytes that were not UTF-8) become ``\\xNN``, control
    characters ``\\xNN`` / ``\\uNNNN``, a backslash ``\\\\``: the result is
    valid, printable UTF-8, and distinct values stay distinct.
    """
    if value.isprintable() and "\\" not in value and value.isascii():
        return value  # the common case, without a look at every character
    return "".join(_escape_char(c) if _needs_escape(c) else c for c in value)


def matches(stored: str, given: str) -> bool:
    """Does ``--name given`` select the series ``stored`` (as is, or in its escaped form)?"""
    return stored == given or display(stored) == given or display(stored) == display(given)


_ESCAPED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})  # controls, surrogates, line breaks


def _needs_escape(char: str) -> bool:
    return char == "\\" or unicodedata.category(char) in _ESCAPED_CATEGORIES


def _escape_char(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's escape of one byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def like_literal(text: str) -> str:
    """``text`` as a LIKE pattern matching only itself (escape character ``\\``): a name or path
    that is a prefix in the catalog's queries must not act as a wildcard."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
