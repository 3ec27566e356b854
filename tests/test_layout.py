"""The package's boundaries: a pure core, no import cycle, small modules, a fast CLI."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dcn_ray"
MAX_LINES = 350


def _modules() -> dict[str, Path]:
    """Every module of dcn_ray by dotted name (packages by their __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, name: str) -> set[str]:
    """The dcn_ray modules a module imports at its top level (not inside functions)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    modules = _modules()
    return {m for m in found if m in modules and m != name}


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


def test_no_import_cycle():
    """The top-level import graph of the package is acyclic."""
    modules = _modules()
    graph = {name: _imports(path, name) for name, path in modules.items()}
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
