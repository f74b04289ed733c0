"""The house's rules, read from the source: layers only import downwards, and no import cycle.

Every module under ``robusta/`` is parsed (``ast``, function-local imports included) and each
``robusta.*`` import is checked against the layers its own layer may use (:data:`ALLOWED`,
docs/architecture.md "The house"):

    cli -> demo -> api | serving -> jobs -> engine -> store -> plan -> ops -> spec
                   (api, serving and jobs also use workspace, which uses plan and spec)

``api`` and ``serving`` are siblings (neither imports the other), ``serving`` and ``store``
import no engine, ``workspace`` sits beside ``store`` (stores take config pieces, not the
workspace), and ``robusta.errors`` is under everything. An import a rule forbids is allowed
only where :data:`EXCEPTIONS` names it with the reason.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "robusta"

BASE = {"errors", "robusta"}  # robusta/errors.py and robusta/__init__.py (the version)
# What each layer (a top-level name under robusta/) may import, besides itself.
ALLOWED: dict[str, set[str]] = {
    "robusta": {"errors"},  # robusta/__init__.py
    "errors": set(),
    "spec": BASE,
    "ops": BASE | {"spec"},
    "plan": BASE | {"spec", "ops"},
    "testing": BASE | {"spec", "ops", "plan"},
    "workspace": BASE | {"spec", "ops", "plan"},
    "store": BASE | {"spec", "ops", "plan"},
    "engine": BASE | {"spec", "ops", "plan", "store"},
    "jobs": BASE | {"spec", "ops", "plan", "workspace", "store", "engine"},
    "api": BASE | {"spec", "ops", "plan", "workspace", "store", "engine"},
    "serving": BASE | {"spec", "ops", "plan", "workspace", "store"},
    "training": {"api"},  # the public re-export of robusta.api.training
    "demo": BASE
    | {"spec", "ops", "plan", "workspace", "store", "engine", "jobs", "api", "serving"},
    "cli": BASE
    | {"spec", "ops", "plan", "workspace", "store", "engine", "jobs", "api", "serving", "demo"},
}

# (importing module, imported module): why a rule above is broken there on purpose.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("robusta.api.training", "robusta.jobs.materialize"): (
        "get_training_frame materializes the tiles missing for the rows' time range "
        "(materialize_missing=True, the documented default; a stale table is never rebuilt "
        "there), so a backfill on a fresh project needs no separate materialize run"
    ),
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported robusta module
    line: int
    runtime: bool  # at module level and not under TYPE_CHECKING: runs at import time


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imports(module: str, path: Path, known: set[str]) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    yield from _visit(tree, module, package, known, runtime=True)


def _visit(
    node: ast.AST, module: str, package: str, known: set[str], *, runtime: bool
) -> Iterator[Import]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == "robusta":
                yield Import(module, alias.name, node.lineno, runtime)
        return
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importing module's package up
            parts = package.split(".")
            base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
        if base.split(".")[0] == "robusta":
            for alias in node.names:  # `from robusta.api import registry` names a module
                name = f"{base}.{alias.name}"
                yield Import(module, name if name in known else base, node.lineno, runtime)
        return
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        runtime = False  # function-local: runs when called, not at import time
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _visit(child, module, package, known, runtime=False)
        for child in node.orelse:
            yield from _visit(child, module, package, known, runtime=runtime)
        return
    for inner in ast.iter_child_nodes(node):
        yield from _visit(inner, module, package, known, runtime=runtime)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


@functools.cache
def all_imports() -> tuple[Import, ...]:
    found = modules()
    known = set(found)
    return tuple(i for name, path in found.items() for i in imports(name, path, known))


def test_every_layer_only_imports_layers_below_it() -> None:
    wrong = []
    for i in all_imports():
        source, target = layer(i.module), layer(i.target)
        if source == target or target in ALLOWED[source]:
            continue
        if (i.module, i.target) not in EXCEPTIONS:
            wrong.append(f"{i.module}:{i.line} imports {i.target} ({source} -> {target})")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(dict.fromkeys(wrong))


def test_every_exception_is_still_needed() -> None:
    used = {(i.module, i.target) for i in all_imports()}
    stale = [f"{a} -> {b}" for a, b in EXCEPTIONS if (a, b) not in used]
    assert not stale, "allow-listed imports that no longer exist: " + ", ".join(stale)


def test_every_module_belongs_to_a_layer() -> None:
    unknown = sorted({layer(m) for m in modules()} - set(ALLOWED))
    assert not unknown, f"modules outside the known layers: {unknown} (add them to ALLOWED)"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_subpackages() -> None:
    edges: dict[str, set[str]] = {}
    for i in all_imports():
        if i.runtime and layer(i.module) != layer(i.target):
            edges.setdefault(layer(i.module), set()).add(layer(i.target))
    assert not cycles(edges), f"import cycles between subpackages: {cycles(edges)}"


def test_no_import_cycle_between_modules() -> None:
    """At import time (module level), not even within a subpackage."""
    edges: dict[str, set[str]] = {}
    for i in all_imports():
        if i.runtime and i.target != i.module:
            edges.setdefault(i.module, set()).add(i.target)
    assert not cycles(edges), f"import cycles between modules: {cycles(edges)}"


def test_the_checker_sees_cycles_and_every_kind_of_import(tmp_path: Path) -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    path = tmp_path / "probe.py"
    path.write_text(
        "from typing import TYPE_CHECKING\n"
        "import robusta.spec.model\n"
        "from robusta.api import registry\n"
        "from ..plan import model\n"
        "if TYPE_CHECKING:\n"
        "    from robusta.engine.base import TileEngine\n"
        "def f():\n"
        "    from robusta.jobs.materialize import materialize\n"
    )
    known = {"robusta.api.registry", "robusta.plan.model"}
    found = [(i.target, i.runtime) for i in imports("robusta.store.probe", path, known)]
    assert found == [
        ("robusta.spec.model", True),
        ("robusta.api.registry", True),
        ("robusta.plan.model", True),
        ("robusta.engine.base", False),
        ("robusta.jobs.materialize", False),
    ]


def test_no_assert_for_control_flow() -> None:
    """``assert`` vanishes under ``python -O``: product code raises instead (the testing
    helpers' asserts are test assertions)."""
    found = [
        f"{module_name(path)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "testing" not in path.relative_to(PACKAGE).parts
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert not found, "assert in product code: " + ", ".join(found)
