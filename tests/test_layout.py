"""The house as docs/layout.md draws it, read from the code's own imports: every import goes down a floor (or stays
inside its folder), no import circle, an import inside a function only where it defers torch, torchvision or
matplotlib and says so, no function over 80 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cnnrepro"
# The floors of docs/layout.md: a unit imports only units on lower floors (and modules of its own folder).
FLOORS = {"runtime": 1, "models": 2, "data": 2, "engine": 3, "config": 3, "bench": 4, "tables": 4, "plan": 4,
          "report": 5, "gpucheck": 5, "startup": 6, "scaffold": 7, "cli": 8}
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, ast.Module]:
    """Dotted module name -> its syntax tree, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(encoding="utf-8"), str(path))
    return out


def unit(module: str) -> str | None:
    """The folder or top-level module a module belongs to (None for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported(module: str, node: ast.AST, known: set[str]) -> list[str]:
    """The package's modules an import statement names (``from cnnrepro.x import y`` names cnnrepro.x.y when that
    is a module, else cnnrepro.x)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("cnnrepro")]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's own package
        package = module.split(".")
        base = ".".join(package[:len(package) - node.level + (1 if module in PACKAGES else 0)])
        source = f"{base}.{node.module}" if node.module else base
    else:
        source = node.module or ""
    if not source.startswith("cnnrepro"):
        return []
    return [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]


MODULES = modules()
PACKAGES = {name for name in MODULES if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file()}


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, tree in MODULES.items():
        graph[name] = {target for node in ast.walk(tree) for target in imported(name, node, set(MODULES))
                       if target in MODULES and target != name}
    return graph


def test_every_folder_and_top_level_module_has_a_floor():
    units = {unit(name) for name in MODULES} - {None}
    assert units == set(FLOORS), f"not in docs/layout.md's floors: {units ^ set(FLOORS)}"
    for name in PACKAGES - {"cnnrepro"}:
        docstring = ast.get_docstring(MODULES[name])
        assert docstring and len(docstring) < 400, f"{name}/__init__.py says what the stage takes and gives"


def test_imports_only_go_down_a_floor():
    upward = []
    for name, targets in import_graph().items():
        for target in targets:
            here, there = unit(name), unit(target)
            if here is None or there is None or here == there:
                continue
            if FLOORS[there] >= FLOORS[here]:
                upward.append(f"{name} imports {target} (floor {FLOORS[there]} from floor {FLOORS[here]})")
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)


def test_an_import_inside_a_function_defers_torch_or_matplotlib_and_says_so():
    found = []
    for name, tree in MODULES.items():
        lines = (PACKAGE.parent / (name.replace(".", "/") + ("/__init__.py" if name in PACKAGES else ".py"))) \
            .read_text(encoding="utf-8").splitlines()
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "# deferred: " not in lines[node.lineno - 1]:
                    found.append(f"{name}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not found, "imports inside functions without '# deferred: <why>':\n" + "\n".join(found)


def test_no_function_is_longer_than_80_lines():
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in MODULES.items() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("module", ["cnnrepro.bench.job", "cnnrepro.runtime.job_server", "cnnrepro.runtime.io",
                                    "cnnrepro.tables.gather", "cnnrepro.report.pdf",
                                    "cnnrepro.runtime.logs", "cnnrepro.engine.chaining", "cnnrepro.engine.evaluation"])
def test_what_jobs_import_before_they_need_torch_does_not_import_it(module):
    """The job server's delegate, the GPU benchmark job without a GPU, the gather and PDF jobs, the chain plan."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr
