"""The package's layering rules, checked on the source so they stay true.

- Only the FAISS backend imports faiss: a second vector backend touches
  ``index/backends/`` and nothing else.
- ``index/`` and ``serving/`` never import ``training/``: a served index needs
  the model, not the trainer.
- Nothing below the CLI imports the CLI, and no two modules import each other,
  directly or round a loop (imports inside functions count too).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in (SRC / "makevl").rglob("*.py")}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions.

    ``from package import name`` counts as importing ``package.name`` when that
    is a module of ours, else ``package``.
    """
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in MODULES else node.module)
    return names


def graph() -> dict[str, set[str]]:
    """makevl module -> the makevl modules it imports."""
    return {name: {m for m in imports(path) if m in MODULES} for name, path in MODULES.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import loop as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for dep in sorted(edges.get(module, ())):
            if cycle := visit(dep, [*path, module]):
                return cycle
        done.add(module)
        return None

    for module in sorted(edges):
        if cycle := visit(module, []):
            return cycle
    return None


def test_only_the_faiss_backend_imports_faiss():
    files = [*SRC.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    users = {p.relative_to(ROOT).as_posix() for p in files if "faiss" in imports(p)}
    assert users == {"src/makevl/index/backends/faiss.py"}


def test_index_and_serving_do_not_import_training():
    offenders = {
        f"{name} imports {dep}"
        for name, deps in graph().items()
        if name.startswith(("makevl.index", "makevl.serving"))
        for dep in deps
        if dep.startswith("makevl.training")
    }
    assert not offenders


def test_only_the_cli_imports_the_cli():
    offenders = {
        f"{name} imports {dep}"
        for name, deps in graph().items()
        if not name.startswith("makevl.cli")
        for dep in deps
        if dep.startswith("makevl.cli")
    }
    assert not offenders


def test_search_does_not_import_build():
    assert "makevl.index.build" not in graph()["makevl.index.search"]


def test_no_import_cycles():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_the_checks_see_a_cycle_and_a_submodule_import():
    """The rules above pass vacuously if the parsing misses imports: check that it does not."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "makevl.models.inference" in graph()["makevl.index.encoders"]
    assert "makevl.index.backends" in graph()["makevl.index.build"]
