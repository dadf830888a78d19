"""Module boundaries of the index: FAISS stays behind the backend seam, no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def imports(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_only_the_faiss_backend_imports_faiss():
    files = [*SRC.rglob("*.py"), ROOT / "benchmarks" / "search_latency.py"]
    users = {p.relative_to(ROOT).as_posix() for p in files if "faiss" in imports(p)}
    assert users == {"src/makevl/index/backends/faiss.py"}


def test_index_modules_import_no_cycle():
    graph = {
        module_name(p): {m for m in imports(p) if m.startswith("makevl.index")}
        for p in (SRC / "makevl" / "index").rglob("*.py")
    }
    assert "makevl.index.build" not in graph["makevl.index.search"]

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, f"import cycle: {' -> '.join([*path, module])}"
        for dep in graph.get(module, ()):
            visit(dep, [*path, module])

    for module in graph:
        visit(module, [])
