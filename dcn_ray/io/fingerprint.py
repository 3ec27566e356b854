"""What an output was computed from: a fingerprint of an input's metadata and of each region read.

An unfinished OME-Zarr output records, in its settings, :func:`metadata_fingerprint` of its input
(format, array, shape, dtype, chunks, the scaling onto [0, 1] and the stored metadata files) and,
per block, :func:`region_digest` of the input values the block was predicted from. ``--resume``
continues only when both still match (:func:`check_regions`), so no store mixes two inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from dcn_ray.errors import InputError
from dcn_ray.io.volumes import Volume

#: The metadata files of a zarr array (v2 and v3) and group, read into the fingerprint.
_METADATA = (".zarray", ".zattrs", "zarr.json")


def metadata_fingerprint(volume: Volume) -> str:
    """SHA-256 of what describes ``volume`` (no voxel is read beyond the scaling's pass)."""
    digest = hashlib.sha256()
    described = [volume.kind, volume.array, list(volume.shape), volume.dtype, list(volume.chunks), list(volume.scaling)]
    digest.update(json.dumps(described).encode())
    if volume.kind in ("zarr", "ome-zarr"):
        folder = Path(volume.location) / volume.array
        for name in _METADATA:
            if (folder / name).is_file():
                digest.update(name.encode() + (folder / name).read_bytes())
    return digest.hexdigest()


def region_digest(values: np.ndarray) -> bytes:
    """SHA-256 of a region's values as the predictor was given them (shape included)."""
    digest = hashlib.sha256(str(values.shape).encode())
    digest.update(np.ascontiguousarray(values).tobytes())
    return digest.digest()


def check_regions(
    volume: Volume,
    regions: Iterable[tuple[tuple[int, int, int], tuple[slice, slice, slice]]],
    digests: np.ndarray | None,
    where: str,
) -> None:
    """InputError naming the input when a region ``(grid index, (z, rows, cols))`` now reads other
    values than ``digests`` recorded in the unfinished store ``where``."""
    regions = list(regions)
    if not regions:
        return
    if digests is None:
        raise InputError(
            f"{where}: records no fingerprint of the input it read (an older dcn-ray); run without --resume"
        )
    for index, (z, rows, cols) in regions:
        if region_digest(volume.read(z, rows, cols)) != bytes(digests[index]):
            span = ", ".join(f"{axis} {s.start}:{s.stop}" for axis, s in zip("zyx", (z, rows, cols)))
            raise InputError(
                f"{volume.source}: the input holds other values ({span}) than the unfinished run in {where} "
                "read; run without --resume to start again"
            )
