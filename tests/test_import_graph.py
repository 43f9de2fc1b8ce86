"""The package's layers, read from the source: `system/` is the library and `pipelines/` the app. The library
imports nothing from the app (not even by a module name in a string, as importlib takes it), and neither package
has an import cycle.

The graph is built with `ast` from every module under both packages, never by importing them: every `import x`
and `from x import y`, at module level, under `if TYPE_CHECKING:` and inside functions alike (an import hidden in
a function is still a dependency), relative imports resolved, and `from package import module` counted as an
import of that module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY, APP = "system", "pipelines"
# A string naming a module of the app ("pipelines.run", the "pipelines." of f"pipelines.{stage}", or the bare
# package name); a path such as "pipelines/configs/" in a message is not a module name.
APP_MODULE_NAME = re.compile(rf"(?<![\w/.-]){APP}(\.|$)")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of both packages (a package is its __init__.py)."""
    out: dict[str, Path] = {}
    for package in (LIBRARY, APP):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = module_files()


def _known(name: str) -> str | None:
    """The module of ours that importing `name` loads: `name` itself, or the longest known prefix of it."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """(imported module of ours, line) for every import statement in `source`, the text of `module`, wherever
    it stands."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(m, node.lineno) for alias in node.names if (m := _known(alias.name))]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x`, `from ..data import y`
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                target = sub if sub in MODULES else _known(base)
                if target:
                    found.append((target, node.lineno))
    return found


def imports_of(module: str) -> list[tuple[str, int]]:
    path = MODULES[module]
    return imports_in(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")


GRAPH: dict[str, dict[str, int]] = {
    m: {t: line for t, line in reversed(imports_of(m)) if t != m} for m in MODULES
}  # module -> {imported module: first line}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def app_names_in_strings(module: str) -> list[tuple[str, int]]:
    """String literals (docstrings aside) in `module` that name a module of the app."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    return [
        (node.value, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in skip
        and APP_MODULE_NAME.search(node.value)
    ]


def cycles(package: str) -> list[list[str]]:
    """The strongly connected components of more than one module in the graph restricted to `package`
    (Tarjan's algorithm), each sorted; a module importing itself is left out (`GRAPH` drops those)."""
    nodes = sorted(m for m in MODULES if m == package or m.startswith(package + "."))
    inside = set(nodes)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(t for t in GRAPH[v] if t in inside):
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
                out.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def _describe(component: list[str]) -> str:
    ties = [
        f"    {a} -> {b} ({MODULES[a].relative_to(REPO)}:{GRAPH[a][b]})"
        for a in component
        for b in sorted(GRAPH[a])
        if b in component
    ]
    return "  " + ", ".join(component) + "\n" + "\n".join(ties)


def test_the_graph_is_read():
    """The reader finds what it must: `from module import name`, `from package import module`, and an import
    inside a function."""
    assert {"system.config", "system.data.dataset_dir", "pipelines.common"} <= set(MODULES)
    assert "system.config" in GRAPH["pipelines.common"]
    assert "system.text.embedding_scorers" in GRAPH["system.text"]  # from system.text import module
    assert "system.data.dataset_dir" in GRAPH["system.text.retrieval"]  # an import inside a function
    assert "pipelines.submit" in GRAPH["pipelines.cli"]
    relative = (
        "from . import scorers\nfrom ..config import Config\nfrom .. import user_errors\nimport numpy\n"
    )
    assert [m for m, _ in imports_in(relative, "system.text.filter")] == [
        "system.text.scorers",
        "system.config",
        "system.user_errors",
    ]
    assert [m for m, _ in imports_in("from . import scorers\n", "system.text", is_package=True)] == [
        "system.text.scorers"
    ]


def test_the_library_imports_nothing_from_the_app():
    imports = [
        f"  {m} imports {t} ({MODULES[m].relative_to(REPO)}:{line})"
        for m in MODULES
        if m.split(".")[0] == LIBRARY
        for t, line in GRAPH[m].items()
        if t.split(".")[0] == APP
    ]
    named = [
        f"  {m} names {value!r} ({MODULES[m].relative_to(REPO)}:{line})"
        for m in MODULES
        if m.split(".")[0] == LIBRARY
        for value, line in app_names_in_strings(m)
    ]
    assert not imports + named, (
        f"{LIBRARY}/ is the library and must not reach into {APP}/ (the app passes in what the library needs):\n"
        + "\n".join(imports + named)
    )


def test_the_library_has_no_import_cycle():
    found = cycles(LIBRARY)
    assert not found, f"import cycles in {LIBRARY}/:\n" + "\n".join(map(_describe, found))


def test_the_app_has_no_import_cycle():
    found = cycles(APP)
    assert not found, f"import cycles in {APP}/:\n" + "\n".join(map(_describe, found))


# Each layer of the library and the layers it may import (docs/architecture.md). `config` and `log_levels` are
# the floor every layer stands on; config reads two leaf modules (below), which import nothing of ours.
LAYERS: dict[str, set[str]] = {
    "model": {"data"},  # checkpoints on object storage are read through data's stores
    "method": {"model"},
    "data": set(),
    "text": {"model", "method", "data"},
    "experiments": {"method"},
    "reports": set(),
    "runtime": {"model", "method", "data", "text", "experiments"},
    "launch": {"data", "experiments", "user_errors"},
    "user_errors": {"data"},
    "log_levels": set(),
}
FLOOR = {"config", "log_levels"}
CONFIG_LEAVES = {"system.model.text_towers", "system.text.scorer_registry"}
RAY_LAYERS = {"runtime", "launch"}  # every `import ray` of the library: Ray itself, and Ray's job client


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_each_layer_imports_only_the_layers_below_it():
    assert set(LAYERS) | FLOOR == {_layer(m) for m in MODULES if m.startswith(LIBRARY + ".")}
    wrong = []
    for m, targets in GRAPH.items():
        if not m.startswith(LIBRARY + "."):
            continue
        here = _layer(m)
        for t, line in targets.items():
            there = _layer(t)
            if t == LIBRARY or there == here or there in FLOOR:
                continue
            allowed = t in CONFIG_LEAVES if here == "config" else there in LAYERS[here]
            if not allowed:
                wrong.append(f"  {m} imports {t} ({MODULES[m].relative_to(REPO)}:{line})")
    assert not wrong, "imports across the layers, against their order:\n" + "\n".join(wrong)
    for leaf in CONFIG_LEAVES:
        assert not GRAPH[leaf], f"{leaf} is read by system.config and must import nothing of ours"


def test_ray_is_imported_only_where_the_library_runs_on_ray():
    found = []
    for m, path in MODULES.items():
        if not m.startswith(LIBRARY + ".") or _layer(m) in RAY_LAYERS:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"  {m}:{node.lineno} imports {n}" for n in names if n.split(".")[0] == "ray"]
    assert not found, "Ray outside system/runtime and system/launch:\n" + "\n".join(found)
