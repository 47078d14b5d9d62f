"""The package's import graph: no cycles, ``saguaro.kernels`` at its bottom, the services above the engine.

Read statically with ``ast``, so no module runs (no torch, no Triton): every ``import`` a
module can execute counts as an edge, at module level or inside a function alike, because an
import moved into a function to dodge a cycle at load time still ties the two modules together
(each needs the other to be understood, tested or moved). Imports under ``if TYPE_CHECKING:``
never execute — they are how a callee names its caller's type for the type checker — and are
not edges. The walk covers whatever modules exist — other modules may come and go — so
nothing here names today's modules. Edges go to the module an import names (``from a.b import
c`` names ``a.b.c`` when that is a module, else ``a.b``); a package's ``__init__`` being run on
the way to a submodule is not an edge, since Python allows re-entering a package that is loading.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "saguaro"
PACKAGE = PACKAGE_DIR.name
KERNELS = f"{PACKAGE}.kernels"


def _module_files() -> dict[str, Path]:
    """Every module of the package by dotted name, following the ``services``/``kernels`` links."""
    modules: dict[str, Path] = {}
    for root, dirs, files in os.walk(PACKAGE_DIR, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
        parts = Path(root).relative_to(PACKAGE_DIR).parts
        for name in sorted(files):
            if not name.endswith(".py") or "_pb2" in name:  # generated protobuf code
                continue
            stem = name[:-3]
            dotted = [PACKAGE, *parts] + ([] if stem == "__init__" else [stem])
            modules[".".join(dotted)] = Path(root, name)
    return modules


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` or ``if typing.TYPE_CHECKING:``."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _executable_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` outside ``if TYPE_CHECKING:`` bodies (their ``else`` runs)."""
    nodes, pending = [], [tree]
    while pending:
        node = pending.pop()
        nodes.append(node)
        children = node.orelse if _is_type_checking(node) else list(ast.iter_child_nodes(node))
        pending.extend(children)
    return nodes


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``module`` can import, anywhere in its body."""
    is_package = path.name == "__init__.py"
    here = module if is_package else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _executable_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # a namespace package or a name outside the package
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def import_graph() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports."""
    modules = _module_files()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None: an iterative depth-first search."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if state.get(start):
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_the_walk_sees_the_whole_package():
    graph = import_graph()
    assert f"{PACKAGE}.services.target.engine" in graph, "the services link was not followed"
    assert f"{KERNELS}.dispatch" in graph, "the kernels link was not followed"
    assert graph[f"{PACKAGE}.parallel.launch"], "imports were not read"


def test_function_level_imports_count_and_type_checking_ones_do_not(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import typed\nelse:\n    from pkg import fallback\n"
        "def f():\n    import pkg.late\n"
    )
    known = {"pkg", "pkg.typed", "pkg.fallback", "pkg.late", "pkg.m"}
    assert _imports("pkg.m", source, known) == {"pkg.fallback", "pkg.late"}


def test_find_cycle_finds_one_hidden_in_a_chain():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_kernels_import_nothing_above_them():
    """The Triton kernels and their launch bookkeeping depend on torch and Triton only; the
    dispatchers that choose between a kernel and its torch reference live with the reference."""
    above = {
        module: sorted(t for t in targets if not (t == KERNELS or t.startswith(KERNELS + ".")))
        for module, targets in import_graph().items()
        if module == KERNELS or module.startswith(KERNELS + ".")
    }
    assert not {m: t for m, t in above.items() if t}, f"kernels importing the rest of the package: {above}"


SERVICES = f"{PACKAGE}.services"
# The command-line entry points run the services, so they sit above them (docs/architecture.md).
ENTRY_POINTS = {f"{PACKAGE}.{name}" for name in ("cli", "cli_commands", "cli_options", "cli_up", "compare", "demo",
                                                 "local_stack")}


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_engine_package_never_imports_the_services():
    """``saguaro/`` is what the services share; only the entry points may reach above it."""
    upward = {
        module: sorted(t for t in targets if _inside(t, SERVICES))
        for module, targets in import_graph().items()
        if not _inside(module, SERVICES) and not _inside(module, KERNELS) and module not in ENTRY_POINTS
    }
    assert not {m: t for m, t in upward.items() if t}, f"saguaro/ importing services/: {upward}"


def _other_services_imported(service: str) -> dict[str, list[str]]:
    """Each module of ``services/<service>`` -> the other services' modules it imports."""
    own = f"{SERVICES}.{service}"
    reaching = {
        module: sorted(t for t in targets if _inside(t, SERVICES) and not _inside(t, own))
        for module, targets in import_graph().items()
        if _inside(module, own)
    }
    return {m: t for m, t in reaching.items() if t}


def test_the_gateway_imports_neither_the_target_nor_the_draft():
    """A gateway pod has no model: it must run without the target's or the draft's code (and torch)."""
    assert not _other_services_imported("gateway")


def test_the_draft_imports_neither_the_target_nor_the_gateway():
    assert not _other_services_imported("draft")
