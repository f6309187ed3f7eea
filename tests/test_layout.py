"""The architecture stays visible: imports point one way, model ← streaming ← server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: What each package may import from the project (besides itself).
ALLOWED = {"model": set(), "streaming": {"model"}, "server": {"model", "streaming"}}
#: Libraries that belong to the serving side only.
SERVING_ONLY = {"asyncio", "aiortc", "aiohttp", "websockets", "uvloop"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_one_way(package: str) -> None:
    forbidden = set(ALLOWED) - ALLOWED[package] - {package}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = _imports(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: dependencies go model <- streaming <- server"


def test_model_has_no_event_loop_or_web_code() -> None:
    for path in sorted((ROOT / "model").rglob("*.py")):
        bad = _imports(path) & SERVING_ONLY
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: model/ is pure and synchronous"


def test_modules_stay_readable() -> None:
    """One file per stage, split above about 600 lines (STYLE.md)."""
    for package in ALLOWED:
        for path in (ROOT / package).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            assert lines <= 600, f"{path.relative_to(ROOT)} has {lines} lines: split it"
