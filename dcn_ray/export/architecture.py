"""Model families as BioImage.IO sees them: a standalone architecture source and its halo.

A BioImage.IO ``pytorch_state_dict`` entry names a Python file and a callable in it; the file is
imported on its own, where dcn-ray is not installed. :func:`architecture_source` writes that file
from the family's own module (and the ``dcn_ray`` modules it imports, inlined in dependency
order), then appends :data:`EXPORTED_CLASS`: the family's class whose ``forward`` returns the
foreground probability (N, 1, H, W) of its first output. The state dict keys stay those of the
checkpoint, and nothing is copied by hand, so a changed network exports as it trains.

A family exports when its :class:`~dcn_ray.models.Family` names its network as ``"module:Class"``
(the checkpoint's ``model_family`` names the family, :func:`dcn_ray.models.family_name`); its size
multiple, receptive radius, title and paper come from that entry, as in training and prediction. A
family of another package exports too: the ``dcn_ray`` modules its network's module imports, and
those of its own package, are inlined.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dcn_ray import models
from dcn_ray.errors import InputError

EXPORTED_CLASS = "BioImageIOModel"


@dataclass(frozen=True)
class Source:
    """Where the exporter finds a family's network: ``class_name(**payload["model_kwargs"])``."""

    module: str
    class_name: str


def family_of(payload: Mapping[str, Any]) -> tuple[models.Family, Source]:
    """The family named by a checkpoint payload (:func:`dcn_ray.models.family_name`) and its network's source."""
    name = str(models.family_name(payload))
    if name not in models.FAMILIES:
        raise InputError(f"model family {name!r} is not installed (known: {', '.join(models.FAMILIES)})")
    family = models.FAMILIES[name]
    if family.source is None:
        raise InputError(
            f"model family {name!r} cannot be exported: its network is built by a function, not 'module:Class'"
        )
    return family, Source(*family.source)


def architecture_source(family: Source) -> str:
    """One importable Python file: the family's modules, then the exported class."""
    order: list[str] = []
    packages = {"dcn_ray", family.module.split(".")[0]}  # a family of another package: its own modules too
    _visit(family.module, order, set(), packages)
    parts = [
        "# Written by dcn-ray export from the dcn_ray modules " + ", ".join(order) + ".",
        "from __future__ import annotations",
    ]
    for name in order:
        parts.append(f"# ---- {name}\n" + _without_package_imports(name, packages))
    parts.append(
        f'''# ---- the exported model
import torch as _torch


class {EXPORTED_CLASS}({family.class_name}):
    """{family.class_name} whose forward gives the foreground probability (N, 1, H, W)."""

    def forward(self, images):
        out = super().forward(images)
        logits = out[0] if isinstance(out, tuple) else out
        return _torch.softmax(logits, dim=1)[:, 1:2]
'''
    )
    return "\n\n".join(parts)


def _package_imports(tree: ast.Module, packages: set[str]) -> list[ast.stmt]:
    """The module-level statements importing from ``packages`` (dcn_ray and the family's own; all of them
    must be ``from package.x import y``)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in packages:
            found.append(node)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise RuntimeError(f"line {node.lineno}: no relative imports in an exported architecture")
        elif isinstance(node, ast.Import) and any(alias.name.split(".")[0] in packages for alias in node.names):
            raise RuntimeError(f"line {node.lineno}: write 'from package.x import y' for the exported architecture")
    return found


def _visit(name: str, order: list[str], seen: set[str], packages: set[str]) -> None:
    """Depth first: a module after the modules of ``packages`` it imports."""
    if name in seen:
        return
    seen.add(name)
    tree = ast.parse(inspect.getsource(importlib.import_module(name)))
    for node in _package_imports(tree, packages):
        if any(alias.asname for alias in node.names):  # type: ignore[attr-defined]
            raise RuntimeError(f"{name} line {node.lineno}: no 'as' in package imports of an exported architecture")
        _visit(node.module, order, seen, packages)  # type: ignore[attr-defined,arg-type]
    order.append(name)


def _without_package_imports(name: str, packages: set[str]) -> str:
    """The module's source less its ``from __future__`` and dcn_ray imports (those are inlined)."""
    source = inspect.getsource(importlib.import_module(name))
    tree = ast.parse(source)
    drop = {id(node) for node in _package_imports(tree, packages)}
    lines = source.splitlines()
    skipped: set[int] = set()
    for node in tree.body:
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if id(node) in drop or future:
            skipped.update(range(node.lineno - 1, node.end_lineno or node.lineno))
    return "\n".join(line for index, line in enumerate(lines) if index not in skipped)
