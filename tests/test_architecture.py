"""The core's layout (docs/architecture.md): no import circles between files, and imports that run one way, from a
wing down to the wings below it. Every import counts: at module level, inside a function, or for type checkers."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "loqi_core"

BASE_TYPES = {"loqi_core.data.sets", "loqi_core.data.images", "loqi_core.degrade.base", "loqi_core.degrade.sampled"}
"""The types the plugin contract names: they sit below ``hooks`` although their wings sit above it."""

LAYERS = [
    {"errors", "version"},
    {"util"},
    {"base types"},
    {"hooks"},
    {"protocol", "losses", "models"},
    {"config"},
    {"data"},
    {"degrade"},
    {"evaluation"},
    {"training"},
    {"report"},
    {"experiments"},
    {"api", "commands"},
    {"cli", "plugin", "testing", "loqi_core"},
]
"""Wings from the ground up; a file may import its own wing and any wing on a lower layer, nothing else."""


def _modules() -> dict[str, Path]:
    out = {}
    for path in CORE.rglob("*.py"):
        parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """The loqi_core modules a file imports (a name imported from a package counts as that package's module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            candidates = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in candidates:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("loqi_core"):
                found.add(name)
                break
    return found


def wing(module: str) -> str:
    if module in BASE_TYPES:
        return "base types"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "loqi_core"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_every_wing_has_a_layer():
    layered = set().union(*LAYERS)
    assert {wing(m) for m in _graph()} == layered, "a wing was added or removed: give it a layer here and in the docs"


def test_imports_run_down_the_layers():
    layer = {w: i for i, group in enumerate(LAYERS) for w in group}
    upward = [
        f"{source} imports {target}: {wing(source)} is on layer {layer[wing(source)]}, {wing(target)} on layer "
        f"{layer[wing(target)]} (imports run down: move the shared piece below both)"
        for source, targets in _graph().items()
        for target in sorted(targets)
        if source != "loqi_core" and target != "loqi_core" and wing(source) != wing(target)
        and layer[wing(target)] >= layer[wing(source)]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles_between_files():
    graph = {m: {t for t in targets if t != "loqi_core"} for m, targets in _graph().items() if m != "loqi_core"}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                circles.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"files that import each other: {circles}"
