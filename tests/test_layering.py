"""Imports point downwards only, and sideways only along the arrows listed here.

Like restic's depguard rules and kopia keeping repo/ free of cli/: a lower layer that
imports a higher one is a design error, caught here by reading every module's imports.
Every import form counts: ``import drtool.x``, ``from drtool.x import y``,
``from drtool import x``, relative imports, imports inside functions and under
TYPE_CHECKING (a type-only arrow is still an arrow), and modules named by string to
``importlib.import_module`` or similar lazy loaders.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "drtool"

RANK = {
    "errors": 0, "testing_hooks": 0, "childenv": 0, "digests": 0, "fdio": 0,
    "crypto": 1, "backends": 1, "units": 1,
    "repository": 2,
    "snapshot": 3, "catalog": 3, "config": 3,
    "sources": 4,
    "core": 5,
    # the feature folders (use cases)
    "backup": 6, "restore": 6, "databases": 6, "rehearse": 6, "maintain": 6, "monitor": 6,
    "browse": 6,
    "api": 7,
    "cli": 8, "__main__": 9,
    "testing": 10,  # fakes and backend checks: may import anything, imported by no product module
}
# Sideways arrows between packages of equal rank (from, to).  Anything else sideways fails.
ALLOWED = {
    ("catalog", "snapshot"), ("catalog", "config"),
    ("databases", "backup"),                 # engines stream their dumps through backup.streams
    ("rehearse", "restore"), ("rehearse", "databases"),   # drills restore into sandboxes
    ("maintain", "databases"),               # forget expires logs, rebuild and copy handle them
    ("maintain", "rehearse"),                # rebuild refills the rehearsal history
    ("monitor", "databases"),                # status reports recoverable windows
    ("backup", "browse"),                    # a backup adds its snapshot's file versions to the file index
    ("maintain", "browse"),                  # catalog rebuild recreates the file index
}
LAZY_LOADERS = {"import_module", "_optional", "__import__"}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent / dotted.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").exists()


def imports_of(module: str, source: str, is_package: bool = False) -> list[str]:
    """Every drtool module this source refers to, in any import form."""
    tree = ast.parse(source, filename=module)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module if node.level == 0 else _resolve_relative(
                module, is_package, node.level, node.module)
            found.append(target or "")
            if target and target.startswith("drtool"):  # "from drtool import api": a module, not a name
                found += [f"{target}.{a.name}" for a in node.names if _is_module(f"{target}.{a.name}")]
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in LAZY_LOADERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
    return [m for m in found if m == "drtool" or m.startswith("drtool.")]


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        if module == "drtool.__init__":
            continue
        assert layer_of(module) in RANK, f"{module}: add its package to RANK in this test"


def check_module(module: str, source: str, is_package: bool = False) -> list[str]:
    own = layer_of(module)
    found = []
    for imported in imports_of(module, source, is_package):
        target = layer_of(imported)
        if imported == "drtool" or target in (own, "__init__"):
            continue
        if RANK[target] > RANK[own]:
            found.append(f"{module} imports {imported} (rank {RANK[target]} > {RANK[own]})")
        elif RANK[target] == RANK[own] and (own, target) not in ALLOWED:
            found.append(f"{module} imports {imported} (sideways {own} -> {target} is not an allowed arrow)")
    return found


def violations() -> list[str]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        if layer_of(module) != "__init__":
            found += check_module(module, path.read_text(), path.name == "__init__.py")
    return found


def test_imports_point_downwards_or_along_allowed_arrows() -> None:
    assert not violations(), "\n".join(violations())


def test_every_import_form_is_seen() -> None:
    """The checker itself: each form of a back-arrow is caught (a checker that misses one is no check)."""
    forms = ["import drtool.cli.main", "from drtool.cli import main", "from drtool import api",
             "from ..cli import main", "import importlib\nimportlib.import_module('drtool.cli.main')",
             "def f():\n    from drtool.core import session\n",
             "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from drtool.api import init\n"]
    for form in forms:
        assert check_module("drtool.crypto.probe", form), f"not caught: {form!r}"
    assert check_module("drtool.crypto.probe", "from drtool import __version__\nimport drtool.errors") == []
    assert check_module("drtool.maintain.probe", "from drtool.catalog import store") == []
    assert check_module("drtool.backup.probe", "from drtool.databases import engine")  # not an arrow


def test_third_party_boundaries() -> None:
    """boto3 only in backends/s3*.py, click only in cli/, cryptography only in crypto/."""
    rules = {"boto3": "drtool/backends/s3", "botocore": "drtool/backends/s3",
             "click": "drtool/cli/", "cryptography": "drtool/crypto/"}
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(PACKAGE.parent))
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module.split(".")[0]]
            for name in names:
                if name in rules:
                    assert rel.startswith(rules[name]), f"{rel} imports {name}"


# The CLI goes through one door: drtool.api (and the exit codes in drtool.errors).
DOORS = {"cli": {"api", "errors", "cli", "__init__"}, "__main__": {"cli"}}


def door_violations(module: str, source: str, is_package: bool = False) -> list[str]:
    allowed = DOORS.get(layer_of(module))
    if allowed is None:
        return []
    return [f"{module} imports {imported}: the {layer_of(module)} layer may use only "
            f"{', '.join(sorted(allowed - {'__init__'}))}"
            for imported in imports_of(module, source, is_package)
            if imported != "drtool" and layer_of(imported) not in allowed]


def test_the_cli_uses_only_the_api_door() -> None:
    found = []
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        found += door_violations(module, path.read_text(), path.name == "__init__.py")
    assert not found, "\n".join(found)
    # the checker can fail: a CLI module reaching past the door is caught in every form
    for form in ("from drtool.maintain import prune", "import drtool.core.session",
                 "def f():\n    from drtool.databases import logarchive\n"):
        assert door_violations("drtool.cli.commands.probe", form), form
    assert door_violations("drtool.cli.commands.probe", "from drtool.api import maintenance") == []
