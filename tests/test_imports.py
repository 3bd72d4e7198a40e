"""``import lvm_pyro`` stays light (scikit-learn, ArviZ and matplotlib load on first use) and the
package's modules import one another without a circle."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import lvm_pyro

PACKAGE = Path(lvm_pyro.__file__).parent
HEAVY = ("sklearn", "scipy", "pandas", "arviz", "xarray", "matplotlib")


def _modules_after(code: str) -> dict[str, bool]:
    """Which of HEAVY a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_lvm_pyro_loads_no_scikit_learn_arviz_or_matplotlib():
    loaded = _modules_after("import lvm_pyro")
    assert loaded == dict.fromkeys(HEAVY, False)


def test_the_public_names_that_need_no_heavy_package_load_none():
    code = (
        "import lvm_pyro\n"
        "from lvm_pyro import fit, em, elbo, log_likelihood, load_digits, make_mixture, validate_data\n"
        "from lvm_pyro.data import load_dataset, resolve_device\n"
        "lvm_pyro.make_mixture(10, 2, 2)"
    )
    assert _modules_after(code) == dict.fromkeys(HEAVY, False)


def test_the_sklearn_facade_loads_scikit_learn_on_first_use():
    loaded = _modules_after("import lvm_pyro\ngm = lvm_pyro.GaussianMixture(2)")
    assert loaded["sklearn"] is True
    loaded = _modules_after("from lvm_pyro import GaussianMixture")
    assert loaded["sklearn"] is True
    loaded = _modules_after("import lvm_pyro\nlvm_pyro.load_digits()")
    assert loaded["sklearn"] is True


def test_every_public_name_resolves():
    for name in lvm_pyro.__all__:
        assert getattr(lvm_pyro, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = lvm_pyro.nope


# ------------------------------------------------------------------------ no import circle


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, deferred: bool):
    """Import statements run when the module is imported: at module level, also inside
    module-level if/try/with blocks, never under ``if TYPE_CHECKING``; with ``deferred`` also
    those inside functions and classes (run at call time: an import put there to break a circle
    still makes one)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                todo += node.body + node.orelse
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if deferred:
                todo += node.body
        else:
            todo += [n for n in ast.iter_child_nodes(node) if isinstance(n, ast.stmt | ast.excepthandler)]


def import_graph(deferred: bool = False) -> dict[str, set[str]]:
    """Module -> the lvm_pyro modules it imports at module level (and with ``deferred`` inside
    functions too); ``from pkg import sub`` counts as importing pkg.sub when sub is a module,
    else pkg."""
    paths = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), deferred):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_sees_the_package():
    graph = import_graph()
    assert "lvm_pyro.data.validation" in graph["lvm_pyro.data"]
    assert "lvm_pyro.errors" in graph["lvm_pyro.data.validation"]
    assert len(graph) > 30


def test_no_import_circle_among_lvm_pyro_modules():
    assert find_cycles(import_graph()) == []


def test_no_import_circle_hidden_by_an_import_at_call_time():
    """Dependencies run one way: an import moved into a function to dodge a circle is still one."""
    assert find_cycles(import_graph(deferred=True)) == []
