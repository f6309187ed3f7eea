"""The architecture stays visible: imports point one way, model ← streaming ← evaluation ← server.

Code imports the project only through the ``emote`` namespace it is installed under
(``emote.model.face.portrait``, never ``model.face.portrait``), and the packaging lists every
package folder, so what runs from the repository is what a user installs.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The installed parts, each a top-level folder of the repository.
PARTS = ("model", "streaming", "evaluation", "server")
#: What each part may import from the project (besides itself).
ALLOWED = {
    "model": set(),
    "streaming": {"model"},
    "evaluation": {"model", "streaming"},
    "server": {"model", "streaming", "evaluation"},
}
#: Inside model/, what each concern may import from the others. The motion interface (the 52 ARKit
#: coefficients and head pose per frame) is the shared vocabulary: face measurement produces it, the
#: renderer consumes it; motion models learn from measured faces. Media I/O depends on nothing.
MODEL_ALLOWED = {
    "media": (),
    "face": ("media", "motion.interface"),
    "motion": ("media", "face"),
    "render": ("face", "motion.interface"),
}
#: Libraries that belong to the serving side only.
SERVING_ONLY = {"asyncio", "aiortc", "aiohttp", "websockets", "uvloop", "starlette", "uvicorn"}
#: Folders of Python code that are not installed but import the project (tools, tests).
TOOLS = ("bench", "tests")


def _modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` gives ``a.b``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _parts(path: Path) -> set[str]:
    """The emote parts (``model``, ``streaming``, ...) ``path`` imports."""
    return {m.split(".")[1] for m in _modules(path) if m.startswith("emote.") and m.count(".") >= 1}


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("part", PARTS)
def test_imports_point_one_way(part: str) -> None:
    forbidden = set(PARTS) - ALLOWED[part] - {part}
    for path in _python_files(part):
        bad = _parts(path) & forbidden
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: dependencies go " \
                        "model <- streaming <- evaluation <- server"


@pytest.mark.parametrize("concern", sorted(MODEL_ALLOWED))
def test_model_concerns_import_one_way(concern: str) -> None:
    allowed = tuple(f"emote.model.{a}" for a in (concern, *MODEL_ALLOWED[concern]))
    for path in _python_files(f"model/{concern}"):
        used = {m for m in _modules(path) if m.split(".")[:3][-1] in MODEL_ALLOWED and m.startswith("emote.model.")}
        bad = {m for m in used if not any(m == a or m.startswith(a + ".") for a in allowed)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: see MODEL_ALLOWED"


def test_everything_imports_the_project_through_the_emote_namespace() -> None:
    for path in _python_files(*PARTS, *TOOLS):
        bare = {m for m in _modules(path) if m.split(".")[0] in PARTS}
        assert not bare, f"{path.relative_to(ROOT)} imports {sorted(bare)}: write emote.{sorted(bare)[0]}"


def test_model_has_no_event_loop_or_web_code() -> None:
    for path in _python_files("model"):
        bad = {m.split(".")[0] for m in _modules(path)} & SERVING_ONLY
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: model/ is pure and synchronous"


def test_tools_do_not_import_tests() -> None:
    for path in _python_files("bench"):
        bad = {m for m in _modules(path) if m.split(".")[0] == "tests"}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: tests depend on tools, not back"


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"emote.web_client"}
    for part in PARTS:
        for init in (ROOT / part).rglob("__init__.py"):
            found.add("emote." + ".".join(init.parent.relative_to(ROOT).parts))
        assert (ROOT / part / "py.typed").exists(), f"{part}/py.typed is missing (PEP 561)"
        assert config["package-dir"][f"emote.{part}"] == part
    assert listed == found, f"pyproject.toml lists {sorted(listed - found)} extra, {sorted(found - listed)} missing"


def test_modules_stay_readable() -> None:
    """One file per stage, split above about 600 lines (STYLE.md)."""
    for path in _python_files(*PARTS):
        lines = len(path.read_text().splitlines())
        assert lines <= 600, f"{path.relative_to(ROOT)} has {lines} lines: split it"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return f"emote.{name}" if parts[0] in PARTS else name


def test_no_import_cycles() -> None:
    """Between the project's modules, counting imports inside functions too (a lazy import still couples)."""
    paths = _python_files(*PARTS, "bench")
    graph = {_module_name(p): set() for p in paths}
    for path in paths:
        for imported in _modules(path):
            while imported and imported not in graph:  # ``from a.b import c`` names module a.b (or a)
                imported = imported.rpartition(".")[0]
            if imported and imported != _module_name(path) and not _module_name(path).startswith(imported + "."):
                graph[_module_name(path)].add(imported)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
