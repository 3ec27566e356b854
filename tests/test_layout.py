"""The package's boundaries: the layer table, a pure core, no import cycle, small modules, a fast CLI."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dcn_ray"
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"
MAX_LINES = 350

#: The floors of the package, bottom first: floor -> (its members, the floors it may import).
#: Members are relative to ``dcn_ray``: ``name/`` a package and every module in it, ``name`` (dotted) one
#: module (``__init__``: the package itself); a module belongs to its own name's floor, else to
#: its longest package's. Within a floor imports are free (the cycle test holds them). This is
#: the layer table of docs/architecture.md (test_the_layer_table_is_the_documented_one): a new
#: arrow is a change of both, made on purpose.
LAYERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "base": (("__init__", "errors", "kernels"), ()),
    "models": (("models/",), ("base",)),
    "io": (("io/",), ("base",)),
    "runtime": (("runtime",), ("base",)),
    "sections": (
        ("job.typed", "job.data_config", "job.model_config", "job.train_config", "job.search_config"),
        ("base", "models"),
    ),
    "job": (("job/",), ("base", "models", "io", "sections")),
    "core": (("core/",), ("base", "models", "io", "sections")),
    "results": (("results/",), ("base", "core")),
    "track": (("track/",), ("base", "models", "io", "sections", "job", "core", "results")),
    "predict": (("predict/",), ("base", "models", "io", "runtime", "core", "track")),
    "export": (("export/",), ("base", "models", "io", "core", "track")),
    "tune": (("tune/",), ("base", "models", "io", "runtime", "sections", "job", "core", "results", "track")),
    "cli": (
        ("cli/", "__main__"),
        (
            "base", "models", "io", "runtime", "sections", "job", "core", "results", "track", "predict", "export",
            "tune",
        ),
    ),
}  # fmt: skip


def _modules() -> dict[str, Path]:
    """Every module of dcn_ray by dotted name (packages by their __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _type_checking(node: ast.AST) -> bool:
    """Whether ``node`` is ``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at any depth (in functions, methods, branches).

    Imports guarded by ``if TYPE_CHECKING:`` are left out (its ``else`` branch is read): they never
    run, so they neither load a module nor close a cycle (runtime.py and core/evaluation.py name
    types that way).
    """
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif _type_checking(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def _imports(path: Path, name: str) -> set[str]:
    """The dcn_ray modules a module imports anywhere in its body (function-level imports too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    modules = _modules()
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    return {name: _imports(path, name) for name, path in _modules().items()}


def test_core_imports_without_ray_or_mlflow():
    """Every module of dcn_ray.core imports with ray and mlflow made unimportable."""
    core = sorted(m for m in _modules() if m == "dcn_ray.core" or m.startswith("dcn_ray.core."))
    assert len(core) >= 10
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('ray', 'mlflow'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for module in {core!r}:\n"
        "    __import__(module)\n"
        "assert not any(m.split('.')[0] in ('ray', 'mlflow') for m in sys.modules)\n"
        "print('ok', len(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")


def test_imports_are_read_inside_functions_but_not_under_type_checking():
    graph = _graph()
    assert "dcn_ray.predict.inspection" in graph["dcn_ray.cli.predict"]  # imported inside a command
    assert "dcn_ray.job.config" not in graph["dcn_ray.runtime"]  # only under TYPE_CHECKING


def test_no_import_cycle():
    """The import graph of the package, function-level imports included, is acyclic."""
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for child in graph[node]:
            if state.get(child) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(child) :], child]))
            if child not in state:
                visit(child, [*trail, child])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def _floor(module: str) -> str | None:
    """The floor of a dotted module name (see :data:`LAYERS`), or None."""
    name = "__init__" if module == "dcn_ray" else module.removeprefix("dcn_ray.")
    best: tuple[int, str] | None = None
    for floor, (members, _) in LAYERS.items():
        for member in members:
            if member == name:
                return floor
            package = member.rstrip("/")
            if member.endswith("/") and (name == package or name.startswith(package + ".")):
                if best is None or len(package) > best[0]:
                    best = (len(package), floor)
    return best[1] if best else None


def test_every_module_has_a_floor_and_the_floors_are_ordered():
    assert sorted(m for m in _modules() if _floor(m) is None) == []
    seen: set[str] = set()
    for floor, (_, below) in LAYERS.items():  # bottom first: a floor imports only floors listed before it
        assert set(below) <= seen, f"{floor} may import {sorted(set(below) - seen)}, which are not below it"
        seen.add(floor)


def test_imports_follow_the_layer_table():
    """Every import between floors (function-level ones too) is an arrow of :data:`LAYERS`.

    So errors and kernels import nothing; core never imports runtime, track, predict, export,
    tune or cli; predict never imports tune, export or cli; only cli imports the commands' floors.
    """
    breaks = []
    for module, imported in sorted(_graph().items()):
        floor = _floor(module)
        for target in sorted(imported):
            other = _floor(target)
            if other != floor and other not in LAYERS[floor][1]:
                breaks.append(f"{module} ({floor}) imports {target} ({other})")
    assert breaks == []


def _documented_layers() -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """The rows of the table under "## Layers" in docs/architecture.md: floor -> (members, may import)."""
    section = ARCHITECTURE.read_text().split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            floor, members, _, below = (tuple(re.findall(r"`([^`]+)`", cell)) for cell in cells)
            rows[floor[0]] = (members, below)
    return rows


def test_the_layer_table_is_the_documented_one():
    assert _documented_layers() == LAYERS


def test_modules_stay_small():
    long = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in long.items() if n > MAX_LINES} == {}


def test_no_module_shadows_the_standard_library():
    """A module named like a standard-library one breaks `python` started inside its folder."""
    stdlib = set(sys.stdlib_module_names) - {"io"}  # io is loaded before sys.path is read
    clashes = [name for name in _modules() if name.rpartition(".")[2] in stdlib]
    assert clashes == []


@pytest.mark.parametrize("command", [["--help"], ["sweep", "JOB", "--dry-run"]])
def test_cli_parses_before_importing_ray_mlflow_or_torch(tmp_path, command):
    """The command line and a bad job file are handled with no heavy import at all."""
    job = tmp_path / "job.yaml"
    job.write_text("- a list\n- not a mapping\n")
    argv = [str(job) if part == "JOB" else part for part in command]
    script = (
        "import sys\n"
        "from dcn_ray.cli import main\ncode = 0\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as done:\n    code = done.code\n"
        "heavy = sorted(m for m in ('ray', 'mlflow', 'torch', 'pyarrow') if m in sys.modules)\n"
        "print('exit', code, 'heavy', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert "heavy []" in result.stderr, result.stderr
    if command != ["--help"]:
        assert "exit 2" in result.stderr and "must hold a mapping" in result.stderr


def test_dry_run_writes_nothing(tmp_path):
    """A dry run of a job whose synthetic stack is missing checks it and writes no file."""
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: dry\ndata: {images: data/images.tif, labels: data/labels.tif, synthetic: {slices: 6, size: 64},"
        " split: {train: '0:4', val: '4:6'}}\nmodel: {width: 4}\ntrain: {crop: 32}\n"
        "sweep: {kernels: [[4, 8, 16]], resources: {gpu: 0}}\n"
    )
    before = sorted(tmp_path.rglob("*"))
    result = subprocess.run(
        [sys.executable, "-m", "dcn_ray", "sweep", str(job), "--dry-run"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "synthetic stack of 6 slices of 64 x 64 will be made" in result.stderr
    assert "4-8-16" in result.stdout
    assert sorted(tmp_path.rglob("*")) == before
