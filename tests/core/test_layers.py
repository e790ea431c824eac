"""The core is layered: no module imports one of a higher layer, and no modules import each other in a cycle.

Every module of `ensemblehub_core` is parsed with `ast`; every import counts for layering (module level,
``if TYPE_CHECKING:`` blocks and imports inside functions alike), module-level ones (``TYPE_CHECKING`` blocks
included) for cycles.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ensemblehub_core

ROOT = Path(ensemblehub_core.__file__).parent
PACKAGE = "ensemblehub_core"

#: Bottom to top. A module may import modules of its own layer or below. ``x/*`` is package ``x`` and all its
#: modules; ``__init__`` is the package root (it re-exports the engine and the hub).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("types", "exceptions", "_text", "_sync", "registry", "tools", "answers"),
    ("_torch", "config"),
    ("models/*", "pool"),
    ("generators/*", "context"),
    ("scorers/*",),
    ("strategies/*",),
    ("engine",),
    ("hub", "calibration", "__init__"),
    ("batch",),
    ("cli",),
)

#: The only module that may reach the integrations, and only from inside a function (`ensemblehub serve`).
INTEGRATIONS = "ensemblehub_integrations"
MAY_IMPORT_INTEGRATIONS = "cli"


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the core."""

    source: str  # the importing module, relative to the package ("generators.hf", "__init__")
    target: str  # the imported module, relative to the package
    line: int
    top_level: bool  # at module level (a TYPE_CHECKING block included), not inside a function


def _modules() -> dict[str, Path]:
    """Every module of the package by its dotted name relative to the package (the root is ``__init__``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """``ensemblehub_core.a.b`` → ``a.b`` (the package root → ``__init__``); None outside the package."""
    if name == PACKAGE:
        return "__init__"
    if name.startswith(PACKAGE + "."):
        return name[len(PACKAGE) + 1 :]
    return None


def _absolute(source: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names, relative forms included."""
    if not node.level:
        return node.module or ""
    package = [PACKAGE] if source == "__init__" else [PACKAGE, *source.split(".")]
    if MODULES[source].name != "__init__.py":
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, node.module] if node.module else package)


def _walk(node: ast.AST, top_level: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, top_level
        inner = top_level and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        yield from _walk(child, inner)


def _imports(source: str) -> tuple[list[Import], list[tuple[str, int, bool]]]:
    """The core modules ``source`` imports, and its imports of the integrations (name, line, top level)."""
    tree = ast.parse(MODULES[source].read_text(encoding="utf-8"))
    found: list[Import] = []
    outside: list[tuple[str, int, bool]] = []
    for node, top in _walk(tree, True):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            module = _absolute(source, node)
            # ``from pkg import sub`` imports the submodule ``pkg.sub``; ``from pkg import name`` the package.
            names = [
                f"{module}.{alias.name}" if _resolve(f"{module}.{alias.name}") in MODULES else module
                for alias in node.names
            ]
        for name in dict.fromkeys(names):  # each module once per statement
            if name == INTEGRATIONS or name.startswith(INTEGRATIONS + "."):
                outside.append((name, node.lineno, top))
            target = _resolve(name)
            if target is not None and target != source:
                found.append(Import(source=source, target=target, line=node.lineno, top_level=top))
    return found, outside


IMPORTS = {m: _imports(m) for m in MODULES}


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if entry.endswith("/*"):
                package = entry[:-2]
                if module == package or module.startswith(package + "."):
                    return i
            elif module == entry:
                return i
    return None


def _where(imp: Import) -> str:
    return f"{PACKAGE}/{MODULES[imp.source].relative_to(ROOT)}:{imp.line}"


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"modules missing from LAYERS in {__name__}: {', '.join(missing)}"


def test_no_module_imports_a_higher_layer() -> None:
    bad = []
    for imports, _ in IMPORTS.values():
        for imp in imports:
            src, dst = _layer(imp.source), _layer(imp.target)
            if dst is None:
                bad.append(f"{_where(imp)}: {imp.source} imports {imp.target}, which is not in LAYERS")
            elif src is not None and dst > src:
                bad.append(f"{_where(imp)}: {imp.source} (layer {src}) imports {imp.target} (layer {dst})")
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_only_the_cli_reaches_the_integrations_and_only_lazily() -> None:
    bad = [
        f"{PACKAGE}/{MODULES[module].relative_to(ROOT)}:{line}: {module} imports {name}"
        + (" at module level" if top else "")
        for module, (_, outside) in IMPORTS.items()
        for name, line, top in outside
        if module != MAY_IMPORT_INTEGRATIONS or top
    ]
    assert not bad, "imports of the integrations:\n" + "\n".join(bad)


def _cycles() -> list[list[Import]]:
    """Import cycles among module-level imports, each as the chain of imports that closes it (DFS)."""
    graph: dict[str, list[Import]] = {m: [] for m in MODULES}
    for module, (imports, _) in IMPORTS.items():
        graph[module] = [i for i in imports if i.top_level and i.target in MODULES]
    cycles: list[list[Import]] = []
    seen: set[frozenset[str]] = set()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[Import] = []

    def visit(module: str) -> None:
        state[module] = 1
        for imp in graph[module]:
            if state.get(imp.target) == 1:
                start = next((k for k, p in enumerate(path) if p.source == imp.target), len(path))
                chain = [*path[start:], imp]
                key = frozenset(p.source for p in chain)
                if key not in seen:
                    seen.add(key)
                    cycles.append(chain)
            elif imp.target not in state:
                path.append(imp)
                visit(imp.target)
                path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_no_import_cycles() -> None:
    cycles = _cycles()
    described = [
        " -> ".join([chain[0].source, *(f"{i.target} ({_where(i)})" for i in chain)]) for chain in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(described)
