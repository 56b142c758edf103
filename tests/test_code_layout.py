"""The package's layout rules (docs/architecture.md), checked on its source.

* No import cycle among ``bids_app`` modules, counting imports inside functions: data
  flows one way, and a newcomer can read each layer without the ones above it.
* No function over 80 lines, other than the declarative argument parsers.
"""

import ast
from pathlib import Path

import bids_app

PACKAGE = Path(bids_app.__file__).parent
MAX_LINES = 80
#: Declarative argparse builders: one ``add_argument`` after another.
PARSERS = {"get_parser"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, path.name == "__init__.py"


def _imports(name, tree, is_package):
    """The bids_app modules ``name`` imports (module level and inside functions)."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bids_app"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("bids_app"):
                continue
            found.add(module)
            # "from . import x" / "from .pkg import module" name modules too
            found.update(f"{module}.{a.name}" for a in node.names)
    return found


def _graph():
    modules = {name: (path, is_package) for name, path, is_package in _modules()}
    graph = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {m for m in _imports(name, tree, is_package)
                       if m in modules and m != name and not name.startswith(m + ".")}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_sees_cycles_and_relative_imports():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("from .criterion import prior_grid\nfrom ..preprocess import slices\n"
                     "def f():\n    from .volume import harmonize_volume\n")
    found = _imports("bids_app.harmonize.selection", tree, False)
    assert {"bids_app.harmonize.criterion", "bids_app.preprocess.slices",
            "bids_app.harmonize.volume"} <= found


def test_no_import_cycle():
    graph = _graph()
    assert "bids_app.harmonize.volume" in graph["bids_app.interfaces.harmonize"]
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_long_functions():
    long = []
    for name, path, _ in _modules():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES and node.name not in PARSERS:
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, "functions over 80 lines: " + ", ".join(long)
