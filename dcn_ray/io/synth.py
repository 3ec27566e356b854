"""Synthetic EM-like stacks, so that anyone can run dcn-ray with no download.

Cells are the Voronoi regions of seeds that drift slowly from slice to slice; membranes are
dark bands about 3 px wide along the cell borders; each cell has its own grey level, a
faint texture and a few small dark blobs (like mitochondria, which the labels count as
interior, so a plain threshold is not a perfect segmenter). Blur and noise finish the look.
Labels follow ISBI 2012: 255 = cell interior, 0 = membrane.

Tasks (``task``): "cells" labels the cell interior (about 80 % of the pixels, as ISBI 2012);
"organelles" draws larger, elongated dark blobs (mitochondria-like) in the same kind of image and
labels only them 255 (about 4-5 % of the pixels): a sparse foreground, beside membranes that are
darker still, so neither a threshold nor "everything dark" segments it.

>>> images, labels = make_synthetic(slices=4, size=64)
>>> images.shape, labels.dtype.name
((4, 64, 64), 'uint8')
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from dcn_ray.errors import InputError
from dcn_ray.io.paths import folder_written_whole, output_folder
from dcn_ray.io.tiff_writer import write_stack

CELL_AREA = 750.0  # pixels per cell on average: about 80 % interior, as in ISBI 2012
MEMBRANE_HALF_WIDTH = 1.5  # pixels from the cell border that are membrane (3 px bands)
BLOB_AREA = 700.0  # pixels per dark blob on average
MEMBRANE_GREY, BLOB_GREY = 0.22, 0.36  # cells are 0.5 to 0.85
TASKS = ("cells", "organelles")
#: The "organelles" task's blobs: pixels per blob on average, radius range, elongation range (the
#: long axis is radius x elongation, the short one radius / elongation): about 4-5 % of the pixels.
ORGANELLE_AREA, ORGANELLE_RADIUS, ORGANELLE_ELONGATION = 700.0, (2.5, 4.5), (1.0, 1.8)


def _drifting(rng: np.random.Generator, count: int, slices: int, size: int) -> np.ndarray:
    """(slices, count, 2) points that move slowly: a steady velocity plus a small random walk."""
    start = rng.uniform(0.0, size, (count, 2))
    velocity = rng.normal(0.0, 0.35, (count, 2))
    walk = np.cumsum(rng.normal(0.0, 0.3, (slices, count, 2)), axis=0)
    return start + velocity * np.arange(slices)[:, None, None] + walk


def _in_blob(pixels: np.ndarray, centres: np.ndarray, radius: np.ndarray, axes: np.ndarray | None) -> np.ndarray:
    """Which pixels lie in a blob: discs, or ellipses (``axes`` (n, 3): elongation, cos, sin)."""
    if axes is None:
        distance, blob = cKDTree(centres).query(pixels)
        return distance < radius[blob]
    inside = np.zeros(len(pixels), bool)
    _, near = cKDTree(centres).query(pixels, k=min(3, len(centres)))
    for blob in near.reshape(len(pixels), -1).T:  # the three nearest centres: overlapping ellipses
        offset = pixels - centres[blob]
        elongation, cos, sin = axes[blob].T
        along, across = offset[:, 0] * cos + offset[:, 1] * sin, offset[:, 1] * cos - offset[:, 0] * sin
        inside |= (along / elongation) ** 2 + (across * elongation) ** 2 < radius[blob] ** 2
    return inside


def make_synthetic(
    *, slices: int = 24, size: int = 256, seed: int = 0, task: str = "cells"
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels, both uint8 (slices, size, size); deterministic for a seed and task."""
    if slices < 1:
        raise ValueError(f"slices must be >= 1, got {slices}")
    if size < 16:
        raise ValueError(f"size must be >= 16, got {size}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    organelles = task == "organelles"
    rng = np.random.default_rng(seed)
    n_cells = max(4, round(size * size / CELL_AREA))
    n_blobs = max(1, round(size * size / (ORGANELLE_AREA if organelles else BLOB_AREA)))
    cells = _drifting(rng, n_cells, slices, size)
    blobs = _drifting(rng, n_blobs, slices, size)
    cell_grey = rng.uniform(0.5, 0.85, n_cells).astype(np.float32)
    blob_radius = rng.uniform(*(ORGANELLE_RADIUS if organelles else (1.8, 3.8)), n_blobs)
    axes = None
    if organelles:
        angle = rng.uniform(0.0, np.pi, n_blobs)
        axes = np.stack([rng.uniform(*ORGANELLE_ELONGATION, n_blobs), np.cos(angle), np.sin(angle)], axis=1)
    in_blobs = np.empty((slices, size * size), bool)
    pixels = np.indices((size, size)).reshape(2, -1).T.astype(np.float64)

    interior = np.empty((slices, size * size), bool)
    grey = np.empty((slices, size * size), np.float32)
    for z in range(slices):
        # distance of each pixel to the border between its nearest and second-nearest seed
        dist, nearest = cKDTree(cells[z]).query(pixels, k=2)
        spacing = np.linalg.norm(cells[z][nearest[:, 0]] - cells[z][nearest[:, 1]], axis=1)
        spacing = np.maximum(spacing, 1e-9)  # two seeds on one spot: no border between them
        to_border = (dist[:, 1] ** 2 - dist[:, 0] ** 2) / (2.0 * spacing)
        interior[z] = to_border > MEMBRANE_HALF_WIDTH
        in_blob = in_blobs[z] = _in_blob(pixels, blobs[z], blob_radius, axes)
        grey[z] = np.where(interior[z], np.where(in_blob, BLOB_GREY, cell_grey[nearest[:, 0]]), MEMBRANE_GREY)

    shape = (slices, size, size)
    texture = gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=(0.0, 2.0, 2.0))
    texture *= 0.05 / max(float(texture.std()), 1e-6)
    image = gaussian_filter(grey.reshape(shape) + texture, sigma=(0.0, 1.0, 1.0))
    image += rng.normal(0.0, 0.05, shape).astype(np.float32)
    images = np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    foreground = interior & in_blobs if organelles else interior
    labels = np.where(foreground.reshape(shape), 255, 0).astype(np.uint8)
    return images, labels


#: The files write_synthetic writes.
FILES = ("images.tif", "labels.tif")


def write_synthetic(
    out_dir: str | Path, *, slices: int = 24, size: int = 256, seed: int = 0, task: str = "cells"
) -> tuple[Path, Path]:
    """Write ``images.tif`` and ``labels.tif`` into ``out_dir`` (created if missing), both or neither.

    Settings out of range, an ``out_dir`` that is a file or cannot be written: InputError, before any work.
    """
    folder = output_folder(out_dir, FILES)
    if slices < 1 or size < 16:
        raise InputError(f"synthetic stack: slices must be >= 1 and size >= 16, got slices={slices}, size={size}")
    if task not in TASKS:
        raise InputError(f"synthetic stack: task must be one of {', '.join(TASKS)}, got {task!r}")
    images, labels = make_synthetic(slices=slices, size=size, seed=seed, task=task)
    settings = {"synthetic": {"slices": slices, "size": size, "seed": seed, "task": task}}
    with folder_written_whole(folder) as partial:
        for name, stack in zip(FILES, (images, labels)):
            write_stack(partial / name, stack, metadata=settings)
    return folder / FILES[0], folder / FILES[1]
