"""No import circle anywhere in the repository, read from the source (ast) without importing anything.

A circle (a imports b, b imports a, possibly through others and inside functions) means two modules are one piece
of code in two files: whichever loads first sees the other half-built, and neither can be read alone. Imports
inside functions count: they only postpone the circle. An edge goes to the most specific module the statement names
(`from engine import checkpoint` -> engine.checkpoint, `from models import get_family` -> models); the parent
packages a statement also loads are left out (a package's __init__ importing its own submodules is no circle).
Families are imported by name at run time (models.get_family), which no parse sees: that is the registry's job.
"""
import ast
from pathlib import Path

from tests.helpers import ROOT


def _sources(root: Path) -> dict[str, Path]:
    """module name -> file, for every .py below root outside hidden folders (.venv, .git) and caches."""
    out = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root)
        if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = f
    return out


def _edges(name: str, path: Path, modules: dict) -> dict[str, int]:
    """Modules of this repository that `name` imports -> line of the first such import."""
    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = {}
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [known(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base)
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t is not None and t != name:
                out.setdefault(t, node.lineno)
    return out


def import_circles(root: Path) -> list[list[str]]:
    """Every circle of module imports below root, one per strongly connected group, as [a, b, ..., a]."""
    modules = _sources(root)
    graph = {m: _edges(m, p, modules) for m, p in sorted(modules.items())}
    order, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        order[v] = low[v] = len(order)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = set()
            while not group or v not in group:
                group.add(stack.pop())
            on_stack.difference_update(group)
            if len(group) > 1:
                groups.append(group)

    for v in graph:
        if v not in order:
            visit(v)
    circles = []
    for group in groups:  # one circle through the group's first module, found breadth-first
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w in sorted(graph[v]):
                if w == start:
                    circles.append(paths[v] + [start])
                    queue = []
                    break
                if w in group and w not in paths:
                    paths[w] = paths[v] + [w]
                    queue.append(w)
    return [[f"{a} ({modules[a].relative_to(root)}:{graph[a][b]})" for a, b in zip(c, c[1:])] + [c[-1]]
            for c in circles]


def test_no_import_circle_in_the_repository():
    circles = import_circles(ROOT)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_a_circle_through_a_function_level_import_is_found(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.a import run\n")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n\ndef run():\n    return b.go()\n")
    (tmp_path / "pkg" / "b.py").write_text("def go():\n    from .a import run\n    return run\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")  # imports into the circle, is not part of it
    assert import_circles(tmp_path) == [["pkg.a (pkg/a.py:1)", "pkg.b (pkg/b.py:2)", "pkg.a"]]
    (tmp_path / "pkg" / "b.py").write_text("def go():\n    return 1\n")
    assert import_circles(tmp_path) == []
