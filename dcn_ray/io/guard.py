"""Outputs never touch inputs: decided on the files and trees behind the paths, before any work.

An input is the file behind it (``file.h5:/dataset`` is ``file.h5``) or, for an array of a zarr
store, the whole store (its outermost zarr group), all taken as resolved real paths (symlinks
followed). An output may not be an input (the same file under a hard link too), contain one (a
store replaced whole would take the input with it), or lie inside one (a store written into).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Union

from dcn_ray.errors import InputError

PathLike = Union[str, "os.PathLike[str]"]
_GROUP_FILES = (".zgroup", "zarr.json")


def input_tree(source: PathLike) -> Path:
    """The real file or store behind an input path (``file.h5:/a`` -> file.h5; ``s.zarr/0`` -> s.zarr)."""
    from dcn_ray.io.stores import split_hdf5

    file, _ = split_hdf5(str(source))
    path = Path(os.path.realpath(file))
    if not path.is_dir():
        return path
    while any((path.parent / name).is_file() for name in _GROUP_FILES) and path.parent != path:
        path = path.parent
    return path


def overlap(output: PathLike, source: PathLike) -> str | None:
    """How ``output`` would touch the input ``source`` ("is", "contains", "lies inside"); None if not."""
    from dcn_ray.io.stores import split_hdf5

    target = Path(os.path.realpath(output))
    behind = Path(os.path.realpath(split_hdf5(str(source))[0]))
    if target == behind or _same_inode(Path(output), behind):
        return "is"
    if target in behind.parents:
        return "contains"
    tree = input_tree(source)
    if target == tree or tree in target.parents:
        return "lies inside"
    return None


def refuse_overlaps(output: PathLike, inputs: Mapping[str, PathLike | None]) -> None:
    """InputError naming the first input (``{what: path}``) that ``output`` is, contains or lies inside."""
    for what, source in inputs.items():
        if source is None:
            continue
        relation = overlap(output, source)
        if relation == "is":
            raise InputError(f"{output}: is {what} of this command ({source}); write the output to another path")
        if relation is not None:
            raise InputError(
                f"{output}: {relation} {what} of this command ({source}); write the output to another path"
            )


def _same_inode(first: Path, second: Path) -> bool:
    try:
        return first.exists() and second.exists() and os.path.samefile(first, second)
    except OSError:
        return False
