"""The dependency rule, read from the imports themselves: tokenizer ← cloud ← train / cluster,
no torch in the tokenizer, and no engine module importing the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Packages each package may import (besides itself, the standard library and third parties).
ALLOWED = {
    "tokenizer": set(),
    "cloud": {"tokenizer"},
    "cluster": {"tokenizer", "cloud"},
    "train": {"tokenizer", "cloud", "cluster"},
}
COMMAND_LINE = ("train.cli", "train.cli")


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from … import`` names, at any depth (lazy ones too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def package_files(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package: str) -> None:
    forbidden = set(ALLOWED) - ALLOWED[package] - {package}
    offences = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in package_files(package)
        for name in sorted(imported_modules(path))
        if name.split(".")[0] in forbidden
    ]
    assert offences == []


def test_the_tokenizer_never_imports_torch() -> None:
    offences = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in package_files("tokenizer")
        for name in sorted(imported_modules(path))
        if name.split(".")[0] == "torch"
    ]
    assert offences == []


def test_no_engine_module_imports_the_command_line() -> None:
    engine = [
        path
        for path in package_files("train")
        if path.relative_to(REPO / "train").parts[0] != "cli"
    ]
    offences = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in engine
        for name in sorted(imported_modules(path))
        if name.startswith(COMMAND_LINE)
    ]
    assert offences == []
