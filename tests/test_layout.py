"""The shape of the code: what the architecture promises, checked on every run.

No import circles in the package; no function over 60 lines without the reason beside it
(a comment on the line above its ``def`` that starts ``# Long:``); every module says in its
first line what it owns; the runtime package orchestrates no cluster.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "tcpecho"
CHECKED = [PACKAGE, ROOT / "cluster", ROOT / "benchmarks", ROOT / "cookbook", ROOT / "noxfile.py"]
LONGEST = 60


def _python_files(place: Path) -> list[Path]:
    return sorted(place.rglob("*.py")) if place.is_dir() else [place]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Every ``tcpecho`` module imported, at any depth, except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("tcpecho"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tcpecho"):
            assert node.module is not None
            found.add(node.module)
            # ``from tcpecho.server import supervisor`` imports a module too.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {
        name: {
            target
            for target in _runtime_imports(ast.parse(path.read_text()))
            if target in paths and target != name
        }
        for name, path in paths.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    circles: list[list[str]] = []
    done: set[str] = set()

    def walk(node: str, trail: list[str]) -> None:
        if node in trail:
            circles.append([*trail[trail.index(node) :], node])
            return
        if node in done:
            return
        for target in sorted(graph[node]):
            walk(target, [*trail, node])
        done.add(node)

    for node in sorted(graph):
        walk(node, [])
    return circles


def test_the_package_has_no_import_circles() -> None:
    graph = _graph()
    assert "tcpecho.server.supervisor" in graph["tcpecho.cli.server"]  # the check sees imports
    assert _circles(graph) == []


def test_the_server_does_not_know_its_supervisor() -> None:
    assert "tcpecho.server.supervisor" not in _graph()["tcpecho.server.server"]


def test_no_function_is_longer_than_60_lines_without_a_reason() -> None:
    long = []
    for folder in CHECKED:
        for path in _python_files(folder):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                reason = lines[start - 2].strip() if start >= 2 else ""
                if length > LONGEST and not reason.startswith("# Long:"):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert long == []


def test_every_module_says_what_it_owns() -> None:
    silent = [
        str(path.relative_to(ROOT))
        for folder in CHECKED
        for path in _python_files(folder)
        if not ast.get_docstring(ast.parse(path.read_text()))
    ]
    assert silent == []


def test_the_runtime_package_orchestrates_no_cluster() -> None:
    """No module of the package runs docker, kind or kubectl: cluster/ does."""
    tools = {"docker", "kind", "kubectl"}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.List | ast.Tuple) and node.elts:
                first = node.elts[0]
                if isinstance(first, ast.Constant) and first.value in tools:
                    raise AssertionError(
                        f"{path.relative_to(ROOT)}:{node.lineno} runs {first.value}"
                    )
