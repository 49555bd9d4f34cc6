"""The package layout is the architecture: no import cycles, imports only point down.

The graph is built from the files' own ``import`` statements (lazy imports
inside functions included), parsed with :mod:`ast`, so it sees what a reader
sees. ``from P import N`` counts as an import of the module ``P.N`` when that
is a module, else of ``P``. Python's implicit import of parent packages is not
an edge: a package's ``__init__`` importing its own children is normal.
docs/architecture.md draws the same levels.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Units from the bottom up; a module may import its own unit or a lower one.
#: A unit is the first component below ``bnmat`` (``ops._types`` is its own:
#: the leaf that both the ops and the kernels import).
LEVELS = [
    ("_array_api", "_segments", "_tree", "_version", "ops._types"),
    ("_kernels",),
    ("ops",),
    ("jacobians", "gradcheck"),
    ("optim", "distributed"),
    ("layers",),
    ("train",),
    ("io", "datasets"),
    ("estimators",),
    ("panel",),
    ("demo", "cli"),
    # deprecated aliases of moved modules sit on top; so does bnmat itself
    ("panel_model", "panel_table", "panel_estimator", "__main__", ""),
]
RANK = {unit: k for k, units in enumerate(LEVELS) for unit in units}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: {modules it imports}}`` for the bnmat modules under ``src``."""
    files = {module_name(p, src): p for p in (src / "bnmat").rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                candidates = [[alias.name] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = ".".join(base[: len(base) - node.level + 1])
                    source = f"{base}.{node.module}" if node.module else base
                else:
                    source = node.module or ""
                candidates = [[f"{source}.{alias.name}", source] for alias in node.names]
            else:
                continue
            for options in candidates:
                hit = next((name for name in options if name in files), None)
                if hit is not None and hit != mod:
                    targets.add(hit)
        graph[mod] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def unit(module: str) -> str:
    parts = module.split(".")[1:]
    if parts[:2] == ["ops", "_types"]:
        return "ops._types"
    return parts[0] if parts else ""


def upward_imports(graph) -> list[str]:
    bad = []
    for mod, targets in graph.items():
        for target in targets:
            if RANK[unit(target)] > RANK[unit(mod)]:
                bad.append(f"{mod} imports {target} ({unit(target)!r} is above {unit(mod)!r})")
    return sorted(bad)


def test_every_unit_has_a_level():
    units = {unit(m) for m in import_graph()}
    assert units <= set(RANK), f"add these to LEVELS and docs/architecture.md: {units - set(RANK)}"


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in found)


def test_imports_only_point_down():
    bad = upward_imports(import_graph())
    assert not bad, "imports pointing up the layers of docs/architecture.md:\n" + "\n".join(bad)


def test_no_module_over_500_lines():
    long = {module_name(p): n for p in (SRC / "bnmat").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"split these along a seam: {long}"


# ---------------------------------------------------------- the checks can fail
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "bnmat" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_cycle_check_sees_a_lazy_cycle(tmp_path):
    src = _write(tmp_path, {
        "__init__.py": "",
        "ops/__init__.py": "",
        "ops/a.py": "def f():\n    from ..layers import b\n",
        "layers/__init__.py": "",
        "layers/b.py": "from ..ops.a import f\n",
    })
    assert cycles(import_graph(src)) == [["bnmat.layers.b", "bnmat.ops.a"]]


def test_cycle_check_sees_from_package_import_module(tmp_path):
    src = _write(tmp_path, {
        "__init__.py": "",
        "cli/__init__.py": "from . import fit\nclass UsageError(Exception): pass\n",
        "cli/fit.py": "from . import UsageError\n",
    })
    assert cycles(import_graph(src)) == [["bnmat.cli", "bnmat.cli.fit"]]


def test_level_check_sees_an_upward_import(tmp_path):
    src = _write(tmp_path, {
        "__init__.py": "",
        "ops/__init__.py": "",
        "ops/a.py": "from ..panel import model\n",
        "panel/__init__.py": "",
        "panel/model.py": "",
    })
    assert upward_imports(import_graph(src)) == [
        "bnmat.ops.a imports bnmat.panel.model ('panel' is above 'ops')"]


# ------------------------------------------------------- moved modules still import
@pytest.mark.parametrize("old, new", [("panel_model", "panel.model"),
                                      ("panel_table", "panel.table"),
                                      ("panel_estimator", "panel.estimator")])
def test_moved_module_paths_still_import_with_a_deprecation_warning(old, new):
    import importlib
    import sys
    import warnings

    sys.modules.pop(f"bnmat.{old}", None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        alias = importlib.import_module(f"bnmat.{old}")
    assert any(issubclass(w.category, DeprecationWarning) and f"bnmat.{new}" in str(w.message)
               for w in seen)
    moved = importlib.import_module(f"bnmat.{new}")
    for name in moved.__all__:
        assert getattr(alias, name) is getattr(moved, name)
