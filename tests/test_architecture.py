"""The package's import rules (README, Architecture): no import cycle anywhere, and each sub-package imports only
the layers below it. Imports inside functions count too: a cycle that works only because an import is deferred is
still a cycle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "morphzoo"

# What each top-level part of morphzoo may import (besides itself). The entry point `python -m morphzoo`
# (__main__.py) is the command line, so it may import cli.
ALLOWED = {
    "errors": set(),  # the error types every part raises
    "cache": {"errors"},
    "resources": set(),
    "loggers": set(),
    "mesh": {"cache", "errors"},
    "nn": set(),
    "fitting": set(),  # duck-typed over any model with a decoder: methods use it
    "metrics": set(),  # pure torchmetrics: no method, no dataset
    "data": {"cache", "errors", "mesh"},
    "methods": {"mesh", "nn", "metrics", "fitting"},
    "callbacks": {"cache"},
    "explorer": {"methods"},  # the page's questions answered with a model
    "deployment": {"cache", "errors", "methods", "nn"},  # ONNX export in the layers' export form
    "recipes": {"callbacks", "data", "errors", "methods", "resources"},
    "zoo": {"cache", "errors", "mesh", "nn", "metrics", "data", "methods", "fitting", "recipes", "resources",
            "__init__"},  # __version__
    "cli": {"cache", "errors", "mesh", "nn", "metrics", "data", "methods", "fitting", "recipes", "resources", "zoo",
            "loggers", "explorer", "deployment"},
    "__main__": {"cli"},
    "__init__": {"zoo"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported_modules(name: str) -> set[str]:
    """Every morphzoo module that ``name`` imports, at any depth of its code (``from a import b`` names ``a.b``
    when that is a module, else ``a``)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: morphzoo uses absolute imports only"
            base = node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def part(module: str) -> str:
    """The top-level part of morphzoo a module belongs to (``morphzoo.zoo.hub`` -> ``zoo``)."""
    return module.split(".")[1] if "." in module else "__init__"


def test_the_walk_sees_imports_at_every_depth():
    # registry.py imports at module level, __init__.py inside a function: both are edges
    assert "morphzoo.zoo.hub" in GRAPH["morphzoo.zoo.registry"]
    assert "morphzoo.zoo.registry" in GRAPH["morphzoo"]


def test_no_import_cycle():
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            cycle = path[path.index(module):] + [module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        path.append(module)
        for imported in sorted(GRAPH[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_every_part_imports_only_the_layers_below_it():
    assert set(map(part, MODULES)) == set(ALLOWED), "a new top-level part of morphzoo needs its row in ALLOWED"
    problems = [f"{module} imports {imported}" for module, imports in sorted(GRAPH.items())
                for imported in sorted(imports)
                if part(imported) != part(module) and part(imported) not in ALLOWED[part(module)]]
    assert not problems, "\n".join(problems)
