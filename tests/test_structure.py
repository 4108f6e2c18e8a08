"""The code's shape, checked (issue #28): no import cycle among kexue's modules, no library function over 60
lines, and imports inside functions only where a comment says why (an optional extra, start-up time, a
torchrun child script). The import graph counts imports inside functions too, so a cycle cannot hide in one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kexue"
MAX_LINES = 60
# a function-level import is allowed when its line, or the comment line just above it, says why with one of these
# (a cycle is no reason: the cycle test counts function-level imports too)
REASONS = ("optional", "extra", "start-up", "startup", "import time", "subprocess", "child")
TECHNIQUES = ("orthogonal", "positional", "contrastive", "whitening", "growth", "mitchell", "repetition")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


MODULES = _modules()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in TECHNIQUES else "core"


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _targets(module: str, path: Path, node: ast.AST) -> list[str]:
    """The kexue modules an import statement loads (``from pkg import submodule`` counts the submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("kexue")]
    if isinstance(node, ast.ImportFrom):
        source = _resolve(module, path, node)
        if not source.startswith("kexue"):
            return []
        subs = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in MODULES]
        return subs or [source]
    return []


def _imports(module: str, path: Path) -> set[str]:
    """Every kexue module that ``module`` imports, at module level or inside a function (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for n in ast.walk(node)
    }
    found = {t for node in ast.walk(tree) if id(node) not in skipped for t in _targets(module, path, node)}
    return {
        t if t in MODULES else t.rsplit(".", 1)[0] for t in found if t in MODULES or t.rsplit(".", 1)[0] in MODULES
    } - {module}


def _cycles() -> list[list[str]]:
    graph = {m: _imports(m, p) for m, p in MODULES.items()}
    # a package's __init__ runs before its submodules: importing kexue.a.b imports kexue.a first
    for m in list(graph):
        for target in list(graph[m]):
            parent = target.rsplit(".", 1)[0]
            if parent in MODULES and parent != m and not m.startswith(parent + "."):
                graph[m].add(parent)
    cycles, state, stack = [], dict.fromkeys(graph, 0), []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt, 2) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif state.get(nxt) == 0:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            walk(node)
    return cycles


def test_no_import_cycle() -> None:
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, body length without the docstring) of every function in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body
                if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                    body = body[1:]
                length = (child.end_lineno - body[0].lineno + 1) if body else 0
                out.append((prefix + child.name, child.lineno, length))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return out


@pytest.mark.parametrize("room", [*TECHNIQUES, "core"])
def test_no_function_over_60_lines(room: str) -> None:
    long = [
        f"{m}.{name} (line {line}): {length} lines"
        for m, p in MODULES.items()
        if _room(m) == room
        for name, line, length in _functions(p)
        if length > MAX_LINES
    ]
    assert not long, f"functions over {MAX_LINES} lines (docstring excluded):\n" + "\n".join(long)


def _function_imports(path: Path) -> list[tuple[int, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines))
    found = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                said = " ".join(lines[max(node.lineno - 2, 0) : node.lineno]).lower()
                if "#" not in said or not any(reason in said for reason in REASONS):
                    found.append((node.lineno, lines[node.lineno - 1].strip()))
    return sorted(set(found))


@pytest.mark.parametrize("room", [*TECHNIQUES, "core"])
def test_imports_inside_functions_say_why(room: str) -> None:
    unexplained = [
        f"{m} line {line}: {text}"
        for m, p in MODULES.items()
        if _room(m) == room
        for line, text in _function_imports(p)
    ]
    assert not unexplained, (
        "imports inside functions without a comment naming the reason "
        f"({', '.join(REASONS)}):\n" + "\n".join(unexplained)
    )
