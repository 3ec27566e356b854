"""The code as it was at a git ref, beside today's, for side-by-side benchmarks in one run.

    metrics_before = module_at("ef35c69", "dcn_ray/core/metrics.py")   # one module, in this process
    tree = package_at("ef35c69")    # the whole package: run a subprocess with PYTHONPATH=tree

The file is read with ``git show REF:PATH`` from this checkout and loaded under a private name
(``before_<ref>_<stem>``); its own ``dcn_ray`` imports resolve to today's package, so use it for
modules whose dependencies did not change in between.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent


def package_at(ref: str) -> Path:
    """A temporary folder holding ``dcn_ray/`` as committed at ``ref`` (``git archive``)."""
    folder = Path(tempfile.mkdtemp(prefix=f"dcn-before-{ref}-"))
    archive = subprocess.run(["git", "archive", ref, "dcn_ray"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def module_at(ref: str, path: str) -> ModuleType:
    """The module at ``path`` (relative to the repository) as committed at ``ref``."""
    source = subprocess.run(
        ["git", "show", f"{ref}:{path}"], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout
    name = f"before_{ref}_{Path(path).stem}".replace("-", "_").replace(".", "_")
    folder = Path(tempfile.mkdtemp(prefix="dcn-before-"))
    file = folder / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module
