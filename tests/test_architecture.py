"""The architecture, checked: the folders, no import circles, the layers, a leaf stage registry.

Every module under workbench/ is parsed (ast, nothing is imported) and its imports are listed
twice: **module-level** ones (run at import time, including those under ``if``/``try`` at module
level, but not ``if TYPE_CHECKING:``) and **function-level** ones (inside a function or method:
run when it is called, the way heavy or upward dependencies are deferred). A circle among
module-level imports fails; function-level imports may point upwards, but never from a lower
layer into ``stages``, ``recipes`` or ``commands``.

``python tests/test_architecture.py`` prints both lists.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"

#: what someone opening the repository should see (README "Layout")
FOLDERS = ("core", "models", "data", "measure", "prune", "train", "search", "stages", "recipes", "commands")
#: the algorithm layers: below the stage adapters, the recipe engine and the commands
LOWER = ("workbench.core", "workbench.models", "workbench.data", "workbench.measure", "workbench.prune",
         "workbench.train", "workbench.search")
UPPER = ("workbench.stages", "workbench.recipes", "workbench.commands", "workbench.cli")
REGISTRY = "workbench.stages.registry"
#: the registry's only deferred imports: the built-in stage list (loaded at the first lookup) and
#: the artifact loader behind StageContext.load_parent
REGISTRY_LAZY = {"workbench.stages.builtin", "workbench.models.artifacts"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(node: ast.Import | ast.ImportFrom, here: str, is_pkg: bool, modules: set[str]) -> set[str]:
    """The workbench modules an import statement names (``from a import b`` names a.b when b is
    a module, else a)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "workbench"}
    base = node.module or ""
    if node.level:
        pkg = here if is_pkg else here.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            pkg = pkg.rsplit(".", 1)[0]
        base = f"{pkg}.{base}" if base else pkg
    if base.split(".")[0] != "workbench":
        return set()
    out = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in modules else base)
    return out


def imports_of(name: str, path: Path, modules: set[str]) -> tuple[set[str], set[str]]:
    """(module-level, function-level) workbench imports of one module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    top: set[str] = set()
    deferred: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit_stmt(sub, in_function)
                continue
            visit_stmt(child, in_function)

    def visit_stmt(child: ast.AST, in_function: bool) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            (deferred if in_function else top).update(_targets(child, name, is_pkg, modules))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(child, True)
        else:
            visit(child, in_function)

    visit(tree, False)
    top.discard(name)
    deferred.discard(name)
    return top, deferred - top


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = all_modules()
    names = set(mods)
    top, deferred = {}, {}
    for name, path in mods.items():
        top[name], deferred[name] = imports_of(name, path, names)
    return top, deferred


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def load_edges(top: dict[str, set[str]]) -> dict[str, set[str]]:
    """What importing each module runs at import time: its module-level imports and the package
    ``__init__`` of each (a package its importer is inside is already being imported: no edge)."""
    edges: dict[str, set[str]] = {}
    for name, targets in top.items():
        out = set()
        own = set(_ancestors(name)) | {name}
        for t in targets:
            out.add(t)
            out.update(a for a in _ancestors(t) if a not in own and a in top)
        edges[name] = {t for t in out if t in top and t != name}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# -- tests ------------------------------------------------------------------------------------

def test_the_folders_show_the_architecture():
    missing = [f for f in FOLDERS if not (PACKAGE / f / "__init__.py").is_file()]
    assert not missing, f"missing packages under workbench/: {missing}"
    # the stage adapters live in stages/, not beside the algorithms
    stray = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("stages.py")]
    assert not stray, f"stage adapters outside workbench/stages/: {stray}"


def test_no_import_circle_among_module_level_imports():
    top, _ = import_graph()
    found = circles(load_edges(top))
    assert not found, "import circles (module-level): " + "; ".join(" -> ".join(c) for c in found)


def test_circle_detection_can_fail():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(edges) == [["a", "b", "c"]]
    # a package __init__ importing its own submodules is no circle; a sibling importing back is
    top = {"workbench.p": {"workbench.p.x"}, "workbench.p.x": {"workbench.p.y"}, "workbench.p.y": set(),
           "workbench.q": {"workbench.p.y"}}
    assert circles(load_edges(top)) == []
    top["workbench.p.y"] = {"workbench.q"}
    assert circles(load_edges(top)) == [["workbench.p", "workbench.p.x", "workbench.p.y", "workbench.q"]]


def test_the_stage_registry_is_a_leaf():
    top, deferred = import_graph()
    assert top[REGISTRY] == set(), f"the registry imports at module level: {sorted(top[REGISTRY])}"
    assert deferred[REGISTRY] <= REGISTRY_LAZY, sorted(deferred[REGISTRY] - REGISTRY_LAZY)
    # and the engine, the loader and every adapter reach the registry, not each other's internals
    users = {m for m, t in top.items() if REGISTRY in t}
    assert {"workbench.recipes.engine", "workbench.stages.train", "workbench.stages.prune",
            "workbench.stages.search", "workbench.stages.quantize", "workbench.stages.evaluate"} <= users


def test_lower_layers_never_import_stages_recipes_or_commands():
    top, deferred = import_graph()
    bad = sorted(f"{m} -> {t}" for m in top if _under(m, LOWER)
                 for t in top[m] | deferred[m] if _under(t, UPPER))
    assert not bad, "a lower layer imports an upper one: " + ", ".join(bad)


def test_core_imports_only_core():
    top, deferred = import_graph()
    bad = sorted(f"{m} -> {t}" for m in top if _under(m, ("workbench.core",))
                 for t in top[m] | deferred[m] if not _under(t, ("workbench.core",)))
    assert not bad, ", ".join(bad)


def test_stage_registration_does_not_import_torch():
    """Registering the stages (what `workbench validate` and the loader do) stays light: every
    adapter defers its algorithm imports to the stage function."""
    import subprocess

    code = "import sys, workbench.stages.builtin; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


if __name__ == "__main__":  # pragma: no cover
    top, deferred = import_graph()
    for title, table in (("module-level imports", top), ("function-level imports", deferred)):
        print(f"== {title}")
        for name in sorted(table):
            if table[name]:
                print(f"{name}: {', '.join(sorted(table[name]))}")
