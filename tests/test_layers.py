"""The package's folders are its architecture, and the checks keep it so (issue: one direction
of dependency). Layers: ground -> store -> concepts -> core -> faces, drawn in
``docs/architecture.md`` and written as an import-linter contract in ``pyproject.toml``.

- import-linter: every import points down a layer, except the allow-listed conveniences;
- an AST scan of every module (imports inside functions included, ``TYPE_CHECKING`` ones not):
  no import cycle, once the allow-listed arrows are set aside;
- only ``agentbook/store/`` writes SQL on the internal ``_ab_`` tables;
- mypy passes on the whole package.

ruff's SLF001 (no reaching into another object's private members) runs in test_lint.py.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "agentbook"


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(path).exists():
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return path


def _allowed_arrows() -> set[tuple[str, str]]:
    """The contract's ignore_imports: the one allow-list of upward arrows."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    arrows = set()
    for contract in config["tool"]["importlinter"]["contracts"]:
        for line in contract.get("ignore_imports", []):
            source, _, target = line.partition(" -> ")
            arrows.add((source.strip(), target.strip()))
    return arrows


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that *name* imports, wherever in the file (lazy ones too),
    leaving out ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                full = f"{module}.{alias.name}"
                targets.add(full if full in modules else module)
        elif isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components larger than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_imports_point_down_the_layers():
    done = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]


def test_no_module_is_part_of_an_import_cycle():
    modules = _modules()
    allowed = _allowed_arrows()
    graph = {
        name: {target for target in _imports(name, path, modules)
               if (name, target) not in allowed
               # the root package is the public facade; a module inside never imports it
               and target != "agentbook"}
        for name, path in modules.items() if name != "agentbook"
    }
    assert _cycles(graph) == []


def test_the_root_package_is_imported_only_from_the_top_layer():
    modules = _modules()
    importers = sorted(
        name for name, path in modules.items()
        if name != "agentbook" and "agentbook" in _imports(name, path, modules)
        and not name.startswith(("agentbook.cli", "agentbook.bench", "agentbook.__main__"))
    )
    assert importers == [], "import the module you need, not the agentbook facade"


_SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|REPLACE|CREATE|DROP|ALTER|FROM|JOIN|INTO)\b"
                  r"[\s\S]*\b_ab_\w+|\b_ab_\w+\b[\s\S]*\b(SET|VALUES|WHERE)\b", re.IGNORECASE)


def test_only_the_store_writes_sql_on_internal_tables():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "store") in path.parents:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and _SQL.search(node.value) and not isinstance(getattr(node, "parent", None), ast.Expr):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    offenders = [o for o in offenders if not _is_docstring(o)]
    assert offenders == [], "ask the store by name instead:\n" + "\n".join(offenders)


def _is_docstring(where: str) -> bool:
    path, line, _ = where.split(":", 2)
    tree = ast.parse((ROOT / path).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and body[0].value.lineno <= int(line) <= body[0].value.end_lineno:
                return True
    return False


@pytest.mark.slow
def test_mypy_passes_on_the_package():
    done = subprocess.run([_tool("mypy"), "agentbook"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
