"""Every third-party module the package imports (at the top of a file or inside a function) is a declared base
dependency, so a plain ``pip install`` runs every command (e.g. the PNG report of ``umarvel eval mbeir``)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_level_modules() -> dict[str, str]:
    """Top-level module name -> first ``file:line`` importing it, over every file of the package."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "umarvel_st").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_imported_package_is_a_base_dependency() -> None:
    tomllib = pytest.importorskip("tomllib")
    declared = {
        _normalise(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0])
        for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module in {"umarvel_st", "__future__"}:
            continue
        providers = {_normalise(name) for name in distributions.get(module, [module])}
        if not providers & declared:
            missing.append(f"{module} ({where}; installed by {sorted(providers)})")
    assert not missing, f"imported but not in [project] dependencies: {missing}"
