"""The package's import graph has no cycle: a newcomer can read any module after the ones it imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The installed package's folders (pyproject.toml maps datamodules/ and callbacks/ into it).
FOLDERS = {"mrcom_lightning": ROOT / "mrcom_lightning", "mrcom_lightning.datamodules": ROOT / "datamodules",
           "mrcom_lightning.callbacks": ROOT / "callbacks"}


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package,) + parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports at module level (imports inside functions or under
    TYPE_CHECKING are not part of the graph: they run after every module is loaded)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for child in ([node] if isinstance(node, (ast.Import, ast.ImportFrom)) else []):
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            else:
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in child.names]
            for target in targets:
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    out.add(target)
    return out


def test_the_package_has_no_import_cycle():
    found = modules()
    graph = {name: imports(path, name, set(found)) for name, path in found.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                cycles.append(path[path.index(child):] + [child] if child in path else [node, child])
            elif child not in state:
                visit(child, path + [child])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    # A package's __init__ importing its own submodules is not a cycle between modules.
    real = [c for c in cycles if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not real, "import cycles: " + "; ".join(" -> ".join(c) for c in real)
    assert len(graph) > 30  # the walk found the package
