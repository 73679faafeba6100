"""What the code imports is what the project declares: a fresh install has every module."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OWN = {"engine", "adapters", "benchmarks", "tests"}


def imported_modules(root: Path) -> set[str]:
    """Top-level names of every module imported anywhere under ``root``."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names - OWN - set(sys.stdlib_module_names)


def declared(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-") for requirement in requirements}


def test_every_module_the_engine_and_adapters_import_is_a_declared_dependency() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    allowed = declared(project["dependencies"]) | declared(project["optional-dependencies"]["local"])
    distributions = packages_distributions()
    missing = {}
    for module in imported_modules(REPO / "engine") | imported_modules(REPO / "adapters"):
        provided_by = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        if not provided_by & allowed:
            missing[module] = sorted(provided_by)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
