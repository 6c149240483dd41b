"""docs/architecture.md's module map names every module of drtool.

The guide asks that docs/architecture.md stay true; a module added without a line
there is the first way it stops being so.  Migrations are listed by the catalog
section, not one by one, so they are left out.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "drtool"
DOC = ROOT / "docs" / "architecture.md"


def product_modules() -> set[str]:
    return {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
            if path.name != "__init__.py" and "migrations" not in path.parts}


def mapped_modules() -> set[str]:
    text = DOC.read_text()
    section = text[text.index("## Module map"):]
    end = section.find("\n## ", 1)
    return set(re.findall(r"^- `([\w/]+\.py)`:", section[:end] if end > 0 else section, re.M))


def test_every_module_is_in_the_module_map() -> None:
    missing = sorted(product_modules() - mapped_modules())
    assert not missing, f"add these to the module map of docs/architecture.md: {missing}"


def test_the_module_map_names_no_module_that_is_gone() -> None:
    gone = sorted(mapped_modules() - product_modules())
    assert not gone, f"the module map of docs/architecture.md names modules that no longer exist: {gone}"


def test_the_map_reader_sees_entries() -> None:
    """The two checks above mean something only if the reader finds the map's lines."""
    assert {"repository/repo.py", "cli/main.py", "errors.py"} <= mapped_modules()
