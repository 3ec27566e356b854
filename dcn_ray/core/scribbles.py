"""Partial labels made from full ones, as a lab would paint them in napari: whole slices, or strokes.

A napari labels layer holds 0 where nothing was painted; here foreground strokes are painted
:data:`FOREGROUND` (1) and background strokes :data:`BACKGROUND` (2), napari's first two labels.
A job reads them with ``data.foreground: 1`` and ``data.background: 2``. Tests and the few-labels
study (docs/results/few-labels.md) draw their partial labels with these functions.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

UNPAINTED, FOREGROUND, BACKGROUND = 0, 1, 2


def painted_slices(mask: np.ndarray, slices: Iterable[int]) -> np.ndarray:
    """A labels layer (uint8, as ``mask``) with ``slices`` painted whole and every other slice unpainted."""
    layer = np.zeros(mask.shape, dtype=np.uint8)
    for z in slices:
        layer[z] = np.where(mask[z], FOREGROUND, BACKGROUND)
    return layer


def scribbles(
    mask: np.ndarray,
    fraction: float,
    *,
    seed: int = 0,
    width: int = 3,
    length: int = 40,
    slices: Iterable[int] | None = None,
) -> np.ndarray:
    """A labels layer of strokes covering about ``fraction`` of the pixels of ``slices`` (all by default).

    Each stroke starts on a random pixel of one class (foreground and background in turn, so a
    sparse foreground gets half the strokes), runs straight in a random direction for up to
    ``length`` pixels, ``width`` pixels wide, and stops where its class ends, as a hand stays inside
    the object it paints. Strokes are added until the painted share reaches ``fraction``.
    Deterministic for a ``seed``.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if mask.ndim != 3 or mask.dtype != np.bool_:
        raise ValueError(f"mask must be a bool (Z, Y, X) array, got {mask.dtype} {mask.shape}")
    rng = np.random.default_rng(seed)
    layer = np.zeros(mask.shape, dtype=np.uint8)
    chosen = list(range(mask.shape[0])) if slices is None else list(slices)
    _, height, wide = mask.shape
    target = fraction * len(chosen) * height * wide
    present = {FOREGROUND: bool(mask[chosen].any()), BACKGROUND: not bool(mask[chosen].all())}
    painted, strokes = 0, 0
    while painted < target and strokes < 1_000_000:
        cls = (FOREGROUND, BACKGROUND)[strokes % 2]
        strokes += 1
        if not present[cls]:
            continue
        for _ in range(10_000):  # a random pixel of the class (rejection: no index of every pixel is kept)
            z, y, x = chosen[rng.integers(len(chosen))], int(rng.integers(height)), int(rng.integers(wide))
            if mask[z, y, x] == (cls == FOREGROUND):
                break
        else:
            continue
        painted += _stroke(layer[z], mask[z] == (cls == FOREGROUND), (y, x), cls, rng, width, length)
    return layer


def _stroke(
    layer: np.ndarray, region: np.ndarray, start: tuple[int, int], cls: int, rng, width: int, length: int
) -> int:
    """Paint one stroke into a slice's ``layer`` inside ``region``; the number of newly painted pixels."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    dy, dx = np.sin(angle), np.cos(angle)
    half, (height, wide), new = width // 2, region.shape, 0
    for step in range(length):
        y, x = round(start[0] + step * dy), round(start[1] + step * dx)
        if not (0 <= y < height and 0 <= x < wide and region[y, x]):
            break
        rows, cols = slice(max(y - half, 0), y + half + 1), slice(max(x - half, 0), x + half + 1)
        fresh = region[rows, cols] & (layer[rows, cols] == UNPAINTED)
        new += int(np.count_nonzero(fresh))
        layer[rows, cols][fresh] = cls
    return new
