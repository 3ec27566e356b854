"""Model families as BioImage.IO sees them: a standalone architecture source and its halo.

A BioImage.IO ``pytorch_state_dict`` entry names a Python file and a callable in it; the file is
imported on its own, where dcn-ray is not installed. :func:`architecture_source` writes that file
from the family's own module (and the ``dcn_ray`` modules it imports, inlined in dependency
order), then appends :data:`EXPORTED_CLASS`: the family's class whose ``forward`` returns the
foreground probability (N, 1, H, W) of its first output. The state dict keys stay those of the
checkpoint, and nothing is copied by hand, so a changed network exports as it trains.

A family exports when :data:`SOURCES` names the module and class of its network (keyed like
:data:`dcn_ray.models.FAMILIES` and the checkpoint's ``model_family``; checkpoints written before
families existed are ``dcn``); its size multiple, receptive radius and title come from
:mod:`dcn_ray.models`, as in training and prediction.
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


SOURCES: dict[str, Source] = {
    "dcn": Source("dcn_ray.models.dcn", "DCN"),
    "unet": Source("dcn_ray.models.unet", "UNet"),
}


def family_of(payload: Mapping[str, Any]) -> tuple[models.Family, Source]:
    """The family named by a checkpoint payload (``dcn`` when it names none) and its source."""
    name = str(payload.get("model_family", "dcn"))
    if name not in SOURCES:
        raise InputError(f"model family {name!r} cannot be exported yet (known: {', '.join(sorted(SOURCES))})")
    return models.get(name), SOURCES[name]


def architecture_source(family: Source) -> str:
    """One importable Python file: the family's modules, then the exported class."""
    order: list[str] = []
    _visit(family.module, order, set())
    parts = [
        "# Written by dcn-ray export from the dcn_ray modules " + ", ".join(order) + ".",
        "from __future__ import annotations",
    ]
    for name in order:
        parts.append(f"# ---- {name}\n" + _without_package_imports(name))
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


def _package_imports(tree: ast.Module) -> list[ast.stmt]:
    """The module-level statements importing from dcn_ray (all of them must be ``from dcn_ray.x import y``)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dcn_ray":
            found.append(node)
        elif isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "dcn_ray" for alias in node.names):
            raise RuntimeError(f"line {node.lineno}: write 'from dcn_ray.x import y' for the exported architecture")
    return found


def _visit(name: str, order: list[str], seen: set[str]) -> None:
    """Depth first: a module after the dcn_ray modules it imports."""
    if name in seen:
        return
    seen.add(name)
    tree = ast.parse(inspect.getsource(importlib.import_module(name)))
    for node in _package_imports(tree):
        if any(alias.asname for alias in node.names):  # type: ignore[attr-defined]
            raise RuntimeError(f"{name} line {node.lineno}: no 'as' in dcn_ray imports of an exported architecture")
        _visit(node.module, order, seen)  # type: ignore[attr-defined,arg-type]
    order.append(name)


def _without_package_imports(name: str) -> str:
    """The module's source less its ``from __future__`` and dcn_ray imports (those are inlined)."""
    source = inspect.getsource(importlib.import_module(name))
    tree = ast.parse(source)
    drop = {id(node) for node in _package_imports(tree)}
    lines = source.splitlines()
    skipped: set[int] = set()
    for node in tree.body:
        future = isinstance(node, ast.ImportFrom) and node.module == "__future__"
        if id(node) in drop or future:
            skipped.update(range(node.lineno - 1, node.end_lineno or node.lineno))
    return "\n".join(line for index, line in enumerate(lines) if index not in skipped)
