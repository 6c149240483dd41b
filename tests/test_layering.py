"""Imports point downwards only: cli → ops → sources → catalog/snapshot → repository → crypto/backends.

Like restic's depguard rules and kopia keeping repo/ free of cli/: a lower layer that
imports a higher one is a design error, caught here by reading every module's imports.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "drtool"

RANK = {
    "errors": 0, "testing_hooks": 0, "childenv": 0,
    "crypto": 1, "backends": 1,
    "repository": 2,
    "snapshot": 3, "catalog": 3, "config": 3,
    "sources": 4,
    "ops": 5,
    "api": 6,
    "cli": 7, "__main__": 8,
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return [m for m in found if m == "drtool" or m.startswith("drtool.")]


def test_every_module_has_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts)
        if module in ("drtool.__init__",):
            continue
        assert layer_of(module) in RANK, f"{module}: add its package to RANK in this test"


def test_imports_point_downwards() -> None:
    violations = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        own = layer_of(module)
        if own == "__init__":
            continue
        for imported in imports_of(path):
            target = layer_of(imported)
            if imported == "drtool" or target == own or target == "__init__":
                continue
            if RANK[target] > RANK[own]:
                violations.append(f"{module} imports {imported}")
    assert not violations, "\n".join(violations)


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
