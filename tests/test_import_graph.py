"""The import graph of the three packages: acyclic, and layered deploy <- train <- export.

Built from the source with :mod:`ast`, without importing anything (so it needs neither torch nor
onnx): every ``import`` / ``from ... import`` at module level *and* inside functions, plus
``importlib.import_module("constant")`` calls, is an edge. Imports under ``if TYPE_CHECKING:``
are left out: they never run, so they cannot close a circle at import time. A name imported
from a package is an edge to its submodule when one of that name exists (``from ossnet_train
import checkpoint``), else to the package. Modules added later are covered automatically.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ossnet_deploy", "ossnet_train", "ossnet_export")
#: what each package may not import (README.md: the runtime never needs torch; training never needs export).
FORBIDDEN = {
    "ossnet_deploy": ("torch", "ossnet_train", "ossnet_export"),
    "ossnet_train": ("ossnet_export",),
    "ossnet_export": (),
}


def _module_files() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every import statement and ``import_module`` call below ``node``, minus TYPE_CHECKING blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.orelse:
                yield from _import_nodes_of(stmt)
            continue
        yield from _import_nodes_of(child)


def _import_nodes_of(node: ast.AST) -> Iterator[ast.AST]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
          and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
          and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        yield node
    yield from _import_nodes(node)


def imported_names(module: str, path: Path) -> set[str]:
    """Dotted names ``module`` imports (internal ones resolved to the most specific module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Call):
            names.add(node.args[0].value)  # type: ignore[attr-defined]
        else:
            assert isinstance(node, ast.ImportFrom)
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                names.add(candidate if candidate in MODULES else source)
    return names


def _internal(name: str) -> str | None:
    """The module of ours that importing ``name`` loads last (longest known prefix), if any."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


IMPORTS = {module: imported_names(module, path) for module, path in MODULES.items()}
GRAPH = {module: sorted({m for m in map(_internal, names) if m and m != module}) for module, names in IMPORTS.items()}


def _find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_covers_the_packages():
    for required in ("ossnet_train.train", "ossnet_train.validate", "ossnet_export.verify", "ossnet_deploy.preprocess"):
        assert required in GRAPH
    # Sanity of the resolution: a known module-level edge and a known relative import are seen.
    assert "ossnet_train.model" in GRAPH["ossnet_train.validate"]
    assert "ossnet_train.unet" in GRAPH["ossnet_train.sliding_window"]


def test_no_import_cycle():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_finder_finds_a_cycle():
    assert _find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": ["b", "c"], "b": ["c"], "c": []}) is None


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_respect_the_dependency_rule(package):
    bad = sorted(
        f"{module} imports {name}"
        for module, names in IMPORTS.items()
        if module.split(".")[0] == package
        for name in names
        if name.split(".")[0] in FORBIDDEN[package]
    )
    assert not bad, bad
