"""The layout docs/ARCHITECTURE.md describes, checked: which package may import which, no import
cycles, FastAPI only under service/api, benchmarks without sys.path edits, no conftest imported as
a module. Static (ast): nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

PACKAGES = ("service", "model", "index")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def imports(path: Path) -> list[str]:
    """Every module name imported anywhere in the file (top level or inside functions)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def project_edges() -> dict[str, set[str]]:
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for name in imports(path):
            target = owner(name)
            if target is not None and target != m and not m.startswith(target + "."):  # a package's own __init__
                edges[m].add(target)
    return edges


def test_packages_point_one_way() -> None:
    allowed = {"index": {"index"}, "model": {"model"}, "service": {"service", "model", "index"}}
    bad = [(m, t) for m, ts in project_edges().items() for t in ts if t.split(".")[0] not in allowed[m.split(".")[0]]]
    assert not bad, bad


def test_no_import_cycles() -> None:
    edges = project_edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                comp.append(w)
            if comp:
                cycles.append(sorted([v, *comp]))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_fastapi_only_in_the_http_layer() -> None:
    web = ("fastapi", "starlette", "uvicorn")
    bad = [m for m, p in modules().items()
           if not m.startswith("service.api") and m != "service.serving.workers"  # workers.py runs uvicorn
           and any(n.split(".")[0] in web for n in imports(p))]
    assert not bad, bad


def test_benchmarks_and_tests_do_not_edit_sys_path_or_import_conftest() -> None:
    offenders = []
    for folder in ("bench", "tests"):
        for p in (ROOT / folder).rglob("*.py"):
            text = p.read_text()
            if p.name != "test_layout.py" and ("sys.path.insert" in text or "sys.path.append" in text):
                offenders.append(str(p.relative_to(ROOT)))
            if any(n.split(".")[-1] == "conftest" for n in imports(p)):
                offenders.append(f"{p.relative_to(ROOT)} imports a conftest")
    assert not offenders, offenders


def test_the_served_process_never_loads_the_build() -> None:
    """What the server process can import (from the app factory and the workers, transitively,
    function-level imports included): no training loop, no offline evaluation, no sample data, no
    build pipeline. The CLI shares option code with the build but imports it only in build commands."""
    edges = project_edges()
    seen, todo = set(), ["service.api.app", "service.serving.workers"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += edges[m]
    loaded = sorted(m for m in seen if m.startswith(("model.train", "model.eval", "model.sample", "service.build")))
    assert not loaded, loaded
