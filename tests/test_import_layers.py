"""Imports flow one way (DESIGN.md, "Architecture"):

    cli → api/futures/launcher → backends/* → coordination → execution → data → storage → model → errors

Read from the source with :mod:`ast`, so imports inside functions and under ``TYPE_CHECKING`` count as
much as those at the top of a module. A module may import its own layer and the layers below it;
a backend package never imports another backend; and no group of modules imports itself in a
cycle. :data:`KNOWN` lists the exceptions that remain, each with why; the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Top to bottom. A module belongs to the first entry that is its name or a prefix of it.
LAYERS: list[tuple[str, ...]] = [
    ("mrkit.cli", "mrkit.__main__"),  # ``python -m mrkit`` is the command line too
    # The user-facing entry points, and the modules that exist for users and tools rather than for
    # the engine (the demo job, the test helper, the corpus generator, the handler path alias).
    (
        "mrkit.api",
        "mrkit.futures",
        "mrkit.launcher",
        "mrkit.tools",
        "mrkit.testing",
        "mrkit.worker",
        "mrkit.multistep",
        "mrkit.pipeline",
        "mrkit.dashboard",
        "mrkit",
    ),
    ("mrkit.backends",),
    ("mrkit.coordination",),
    ("mrkit.execution",),
    ("mrkit.data",),
    ("mrkit.storage",),
    ("mrkit.model",),
    # Leaves: they import nothing of mrkit but each other.
    ("mrkit.errors", "mrkit.security", "mrkit._version"),
]

#: (importer, imported) pairs that break a rule today, with the reason. Empty is the goal.
KNOWN: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in SRC.joinpath("mrkit").rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The mrkit modules ``name`` imports anywhere in its source (``from pkg import mod`` resolves to
    the module ``pkg.mod`` when there is one, else to ``pkg``)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "mrkit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "mrkit":
                continue
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.add(child if child in modules else target)
    found.discard(name)
    return {m for m in found if m in modules}


def layer_of(name: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes if p != "mrkit") or name == "mrkit":
            return rank
    raise AssertionError(f"{name} belongs to no layer: add it to LAYERS")


def backend_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "backends" else None


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_import_goes_down_the_layers_and_no_backend_imports_another() -> None:
    problems = []
    for importer, imported in sorted((a, b) for a, bs in graph().items() for b in bs):
        if (importer, imported) in KNOWN:
            continue
        if layer_of(imported) < layer_of(importer):
            problems.append(f"{importer} imports {imported}, a layer above it")
        mine, theirs = backend_of(importer), backend_of(imported)
        if mine and theirs and mine != theirs:
            problems.append(f"{importer} imports {imported}: one backend imports another")
    assert not problems, "\n".join(problems)


def test_no_module_imports_itself_through_others() -> None:
    edges = {a: {b for b in bs if (a, b) not in KNOWN} for a, bs in graph().items()}
    # Tarjan's strongly connected components: any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_known_exceptions_are_still_needed() -> None:
    """An exception that no longer occurs is removed from :data:`KNOWN`, so the list only shrinks."""
    edges = graph()
    stale = [pair for pair in KNOWN if pair[1] not in edges.get(pair[0], set())]
    assert not stale, f"remove from KNOWN: {stale}"
