"""The shape of the code: what the architecture promises, checked on every run.

No import circles in the package, and every module on its floor: it imports only from its
own unit or from floors below, as docs/architecture.md lists them (read from the page, so
the two cannot drift). Every import counts: those only for the type checker (``if
TYPE_CHECKING``) and those inside functions, made on first use, are dependencies too.
The scripts beside the package use only the public names of ``tcpecho.cli`` and
``tcpecho.lab``; no function is over 60 lines without the reason beside it (a comment on the
line above its ``def`` that starts ``# Long:``); every module says in its first line what it
owns; the runtime package orchestrates no cluster.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "tcpecho"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
OUTSIDE = [ROOT / "cluster", ROOT / "benchmarks", ROOT / "cookbook"]
CHECKED = [PACKAGE, *OUTSIDE, ROOT / "noxfile.py"]
LONGEST = 60
# Packages whose public names (their ``__all__``) are all the code outside may import, and the
# modules of theirs that are public as modules (the lab's ``__init__`` says so).
PUBLIC_API = ("tcpecho.cli", "tcpecho.lab")
PUBLIC_MODULES = {
    "tcpecho.lab.report",
    "tcpecho.lab.topology",
    "tcpecho.lab.servers",
    "tcpecho.lab.grpc_server",
}


def _python_files(place: Path) -> list[Path]:
    return sorted(place.rglob("*.py")) if place.is_dir() else [place]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT / "src").with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """A module's unit: its top-level name under tcpecho (``tcpecho.tcp.diag`` is in ``tcp``,
    ``tcpecho.model`` in ``model`` whether a module or a package); the package itself is
    ``__init__``, after its file."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``path`` imports, at any depth: under ``if
    TYPE_CHECKING`` and inside functions too. ``from package import name`` depends on the
    module ``package.name`` where there is one, else on ``package`` (its ``__init__``)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package, one level up per dot
                above = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*above, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return found & known


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


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


def _floors() -> list[set[str]]:
    """The units on each floor, from the ground up, as the architecture page lists them:
    "The floors, from the ground up: `a`, `b`; `c`; ... ." (floors apart by ``;``)."""
    text = " ".join(ARCHITECTURE.read_text().split())
    found = re.search(r"The floors, from the ground up: ([^.]*)\.", text)
    assert found, f"{ARCHITECTURE.name} has no paragraph 'The floors, from the ground up: ...'"
    return [set(re.findall(r"`([^`]+)`", floor)) for floor in found.group(1).split(";")]


def _floor_of_unit() -> dict[str, int]:
    floor_of: dict[str, int] = {}
    for number, units in enumerate(_floors()):
        for unit in units:
            assert unit not in floor_of, f"{unit} is on two floors of {ARCHITECTURE.name}"
            floor_of[unit] = number
    return floor_of


def test_the_package_has_no_import_circles() -> None:
    graph = _graph()
    # The check sees every import: at the top, inside a function, only for the type checker.
    assert "tcpecho.server.supervisor" in graph["tcpecho.cli.server"]  # inside the command
    assert "tcpecho.tcp.options" in graph["tcpecho.cli.server"]  # only if TYPE_CHECKING
    assert "tcpecho.server.metrics" in graph["tcpecho.server.server"]  # inside a method
    assert _circles(graph) == []


def test_every_module_imports_only_from_its_own_unit_or_the_floors_below() -> None:
    floor_of = _floor_of_unit()
    graph = _graph()
    units = {_unit(module) for module in graph}
    assert sorted(units - set(floor_of)) == [], f"units on no floor of {ARCHITECTURE.name}"
    assert sorted(set(floor_of) - units) == [], f"floors of {ARCHITECTURE.name} name no unit"
    upward = [
        f"{module} ({_unit(module)}, floor {floor_of[_unit(module)]}) imports {target} "
        f"({_unit(target)}, floor {floor_of[_unit(target)]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if _unit(target) != _unit(module) and floor_of[_unit(target)] >= floor_of[_unit(module)]
    ]
    assert upward == []


def test_the_server_does_not_know_its_supervisor() -> None:
    assert "tcpecho.server.supervisor" not in _graph()["tcpecho.server.server"]


def _declared_all(package: str) -> list[str]:
    """The package's ``__all__``, as its ``__init__`` spells it."""
    path = PACKAGE.joinpath(*package.split(".")[1:], "__init__.py")
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__":
            names: list[str] = ast.literal_eval(node.value)
            return names
    raise AssertionError(f"{path.relative_to(ROOT)} declares no __all__")


def _private_uses(tree: ast.Module, public: dict[str, list[str]]) -> list[str]:
    """What ``tree`` imports of ``PUBLIC_API``'s packages beyond their public names."""

    def private(module: str) -> bool:
        inside = any(module.startswith(f"{package}.") for package in public)
        return inside and module not in PUBLIC_MODULES

    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            used += [f"import {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module in public:
            used += [
                f"from {node.module} import {alias.name}"
                for alias in node.names
                if alias.name not in public[node.module]
                and f"{node.module}.{alias.name}" not in PUBLIC_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and private(node.module or ""):
            used.append(f"from {node.module} import ...")
    return used


def test_outside_code_uses_only_the_public_names_of_the_cli_and_the_lab() -> None:
    """cluster/, cookbook/ and benchmarks/ import no module behind ``tcpecho.cli`` or
    ``tcpecho.lab``'s public names, and only names of their ``__all__``."""
    public = {package: _declared_all(package) for package in PUBLIC_API}
    used = [
        f"{path.relative_to(ROOT)}: {use}"
        for folder in OUTSIDE
        for path in _python_files(folder)
        for use in _private_uses(ast.parse(path.read_text()), public)
    ]
    assert used == []


def _loaded_after(code: str) -> set[str]:
    """The tcpecho modules a fresh interpreter has loaded after running ``code``."""
    report = "\nimport sys; print(*(m for m in sys.modules if m.startswith('tcpecho')))"
    done = subprocess.run(
        [sys.executable, "-c", code + report], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_every_public_name_is_there() -> None:
    """Each name of each ``__all__`` resolves (the lab's are looked up on first use)."""
    code = (
        "import importlib\n"
        f"for package in {PUBLIC_API!r}:\n"
        "    module = importlib.import_module(package)\n"
        "    for name in module.__all__:\n"
        "        getattr(module, name)"
    )
    assert {"tcpecho.lab.main", "tcpecho.lab.runner"} <= _loaded_after(code)


def test_the_command_line_loads_no_machinery_for_its_help() -> None:
    """``import tcpecho.cli`` (what ``tcpecho --help`` pays) loads no command's machinery,
    and ``tcpecho lab --help`` reads the lab's profiles without loading its runner."""
    machinery = {
        "tcpecho.bench.runner",
        "tcpecho.client.client",
        "tcpecho.lab.main",
        "tcpecho.lab.runner",
        "tcpecho.server.server",
    }
    assert _loaded_after("import tcpecho.cli") & (machinery | {"tcpecho.lab"}) == set()
    lab_help = (
        "import contextlib\nfrom tcpecho.cli import main\n"
        "with contextlib.suppress(SystemExit):\n    main(['lab', '--help'])"
    )
    loaded = _loaded_after(lab_help)
    assert "tcpecho.lab.profiles" in loaded  # the check sees what the help loads
    assert loaded & machinery == set()


def test_the_package_says_it_is_typed() -> None:
    """PEP 561: a type checker reads an installed tcpecho's own annotations."""
    assert (PACKAGE / "py.typed").is_file()


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
