"""The ``sdlite`` package's imports, read statically (``ast``) from runtime/ and export/.

Every import counts, at module level or inside a function (a lazy import still ties two modules
together), except under ``if TYPE_CHECKING:``.  Importing ``sdlite.a.b`` is an edge to ``sdlite.a.b``
only: the parent packages' ``__init__`` run too, but counting them would make every module depend
on ``sdlite/__init__`` (the public facade, which imports the pipeline).

Rules checked:

(a) no cycle among the package's modules;
(b) layers: CLI / server / batch / export (entry points) -> pipeline level -> base (sessions,
    samplers, tokenizer, images, rules, errors).  No module below the entry points imports one,
    base modules import only base modules, and nothing but ``__main__`` imports ``sdlite.cli``;
(c) no module imports or reads another module's underscore name (``from .x import _y``,
    ``x._y`` on an imported module, ``obj.member._y`` / ``getattr(obj, "_y")`` on an object that
    is not ``self``/``cls``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"sdlite": ROOT / "runtime", "sdlite.export": ROOT / "export", "sdlite.models": ROOT / "models"}
ENTRY = ("sdlite.cli", "sdlite.__main__", "sdlite.batch", "sdlite.server", "sdlite.export")
BASE = (
    "sdlite.sessions",
    "sdlite.samplers",
    "sdlite.tokenizer",
    "sdlite.images",
    "sdlite.rules",
    "sdlite.errors",
)
FACADE = "sdlite"  # sdlite/__init__.py re-exports the pipeline: above the layers, below nothing

# Known exceptions (module, name): none, and the test keeps it so.
ALLOWED_PRIVATE: set[tuple[str, str]] = set()
ALLOWED_PRIVATE_IMPORTS: set[tuple[str, str]] = set()


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: set[str] = field(default_factory=set)
    bound: dict[str, str] = field(default_factory=dict)  # local name -> imported sdlite module


def _module_name(package: str, root: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    # runtime/ holds the sdlite package itself; export/ and models/ are sdlite.export / .models.
    if package == "sdlite" and parts[:1] in (["export"], ["models"]):
        raise LookupError
    return ".".join([package, *parts]), is_package


def _load() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            if "recipe" in path.relative_to(root).parts:  # the demo model's training code, not shipped
                continue
            try:
                name, is_package = _module_name(package, root, path)
            except LookupError:
                continue
            modules[name] = Module(name, path, is_package, ast.parse(path.read_text(encoding="utf-8")))
    return modules


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _base_of(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = mod.name if mod.is_package else mod.name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def _resolve(mod: Module, modules: dict[str, Module]) -> None:
    skip = _type_checking_nodes(mod.tree)
    for node in ast.walk(mod.tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    mod.imports.add(alias.name)
                    if alias.asname:
                        mod.bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _base_of(mod, node)
            if base not in modules:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:  # `from . import batch`: the submodule
                    mod.imports.add(sub)
                    mod.bound[alias.asname or alias.name] = sub
                else:
                    mod.imports.add(base)


def _graph() -> dict[str, Module]:
    modules = _load()
    for mod in modules.values():
        _resolve(mod, modules)
    return modules


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") or name.startswith(p + "_") for p in prefixes)


def _layer(name: str) -> int:
    if name == FACADE:
        return 3
    if _in(name, ENTRY):
        return 2
    return 0 if _in(name, BASE) else 1


def _cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is small enough for recursion
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(modules[v].imports):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in modules[v].imports:
                out.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return out


def _private_reads(mod: Module) -> Iterator[str]:
    """Underscore names read from another module or object (dunders are not private)."""

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            base = node.value
            if isinstance(base, ast.Name) and (base.id in ("self", "cls") or base.id not in mod.bound):
                continue  # own members, or a local object (e.g. stdlib's argparse._SubParsersAction)
            yield ast.unparse(node)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and private(node.args[1].value)
            and not (isinstance(node.args[0], ast.Name) and node.args[0].id in ("self", "cls"))
        ):
            yield ast.unparse(node)


def _private_imports(mod: Module, modules: dict[str, Module]) -> Iterator[str]:
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.ImportFrom) and _base_of(mod, node) in modules:
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield f"{_base_of(mod, node)}.{alias.name}"


def test_the_graph_is_read():
    # Guards the reader itself: a broken resolver would find no edges and pass everything below.
    modules = _graph()
    assert {"sdlite.cli", "sdlite.pipeline", "sdlite.batch", "sdlite.server.app"} <= set(modules)
    assert "sdlite.pipeline" in modules["sdlite"].imports
    assert "sdlite.batch" in modules["sdlite.cli"].imports  # a lazy import inside a function
    assert "sdlite.images" in modules["sdlite.pipeline"].imports


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycles_are_detected():
    modules = _graph()
    modules["sdlite.images"].imports.add("sdlite.cli")  # cli -> ... -> images -> cli
    assert any("sdlite.cli" in c and "sdlite.images" in c for c in _cycles(modules))


def test_layers_import_downwards_only():
    modules = _graph()
    wrong = [
        f"{m.name} -> {target}"
        for m in modules.values()
        for target in sorted(m.imports)
        if m.name != FACADE and _layer(target) > _layer(m.name)
    ]
    assert wrong == []


def test_nothing_imports_the_cli():
    importers = sorted(m.name for m in _graph().values() if "sdlite.cli" in m.imports)
    assert importers == ["sdlite.__main__"]


def test_no_module_reads_another_modules_private_names():
    modules = _graph()
    found = {(m.name, text) for m in modules.values() for text in _private_reads(m)}
    imported = {(m.name, text) for m in modules.values() for text in _private_imports(m, modules)}
    assert found - ALLOWED_PRIVATE == set()
    assert imported - ALLOWED_PRIVATE_IMPORTS == set()
    # The allow-lists only shrink: an entry that no longer occurs must be deleted.
    assert ALLOWED_PRIVATE - found == set() and ALLOWED_PRIVATE_IMPORTS - imported == set()
