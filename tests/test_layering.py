"""The engine's import graph follows the layers stated in engine/__init__.py (packages, lowest first) and has no cycle,
every module says what it owns, pages stay thin, and the UI reaches the engine only through its front door."""

from __future__ import annotations

import ast
from pathlib import Path

import engine
from tests.conftest import ROOT

ENGINE = ROOT / "engine"
MAX_PAGE_LINES = 150


def _module_name(path: Path) -> str:
    rel = path.relative_to(ENGINE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _engine_imports(path: Path) -> set[str]:
    """Every engine module `path` imports, anywhere in the file (function bodies and `if TYPE_CHECKING:` included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name.removeprefix("engine.") for a in node.names if a.name.startswith("engine.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "engine":
            base = node.module.removeprefix("engine").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}".lstrip(".")
                out.add(candidate if (ENGINE / candidate.replace(".", "/")).with_suffix(".py").exists() else base)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports (from engine.x import y)")
    return {m for m in out if m}


def _engine_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ENGINE.rglob("*.py") if _module_name(p)}


def _layer(module: str) -> str:
    """The layer of an engine module: its package (engine.methods.svc -> methods), or the module itself (errors, api)."""
    return module.split(".")[0]


def test_every_engine_module_is_in_a_layer_and_imports_only_its_own_or_lower_layers():
    layers = {name: i for i, name in enumerate(engine.LAYERS)}
    modules = _engine_modules()
    packages = {m for m, p in modules.items() if p.name == "__init__.py"}
    assert {_layer(m) for m in modules} == set(layers) and len(layers) == len(engine.LAYERS), "engine.LAYERS must list every layer once"
    violations = []
    for name, path in modules.items():
        for target in _engine_imports(path):
            if target in packages:
                violations.append(f"{name} imports the package engine.{target}; import its modules")
            elif name in packages:
                violations.append(f"package {name} imports {target}: a package's __init__ holds no code")
            elif layers[_layer(target)] > layers[_layer(name)]:
                violations.append(f"{name} (layer {_layer(name)}) imports {target} (layer {_layer(target)}, above it)")
    assert not violations, "\n".join(violations)


def test_every_engine_module_and_package_says_what_it_owns():
    missing = [str(p.relative_to(ROOT)) for p in ENGINE.rglob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def test_no_formatter_opt_outs_pack_code():
    packed = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in ENGINE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "fmt: skip" in line or "fmt: off" in line
    ]
    assert not packed, f"lines packed past the formatter: {packed}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])
    return found


def test_import_graph_has_no_cycle():
    graph = {name: _engine_imports(path) for name, path in _engine_modules().items()}
    assert not _cycles(graph)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_ui_imports_only_the_front_door_and_errors():
    allowed = {"api", "errors"}
    files = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py"))]
    bad = {str(f.relative_to(ROOT)): sorted(_engine_imports(f) - allowed) for f in files}
    assert not {k: v for k, v in bad.items() if v}


def test_pages_stay_thin():
    pages = {
        p.name: n for p in [ROOT / "app.py", *(ROOT / "pages").glob("*.py")] if (n := len(p.read_text().splitlines())) > MAX_PAGE_LINES
    }
    assert not pages, f"pages over {MAX_PAGE_LINES} lines: {pages}"
