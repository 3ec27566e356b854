"""Read TIFF stacks: images as float32 in [0, 1], labels as masks (opened by :mod:`dcn_ray.io.tiff_layout`).

A stack is a numpy array shaped (Z, Y, X): images as float32 in [0, 1], masks as bool.
Every problem with a user's file raises :class:`InputError` with one line naming the file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from dcn_ray.errors import InputError
from dcn_ray.io.tiff_layout import Layout, PathLike, open_stack, reading

log = logging.getLogger(__name__)


#: A label pixel is "coloured" when its channel spread max(R, G, B) - min(R, G, B) exceeds this
#: fraction of the full scale (25 of 255 for uint8): grey, white and black pixels, including
#: slightly tinted ones from lossy compression, are background. Fully transparent pixels too.
COLOUR_TOLERANCE = 0.1

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 grey, as PIL's "L" mode


# ---------------------------------------------------------------- reading


def _as_zyx(raw: np.ndarray, axes: str, layout: Layout, z: int) -> np.ndarray:
    """Stored data of ``z`` slices -> (z, Y, X), or (z, Y, X, channels) for colour."""
    if layout.kind == "rgb":
        raw = np.moveaxis(raw, axes.index("S"), -1)
        return raw.reshape((z, *layout.shape[1:], raw.shape[-1]))
    if layout.kind == "palette":
        assert layout.colormap is not None
        return np.moveaxis(layout.colormap[:, raw], 0, -1).reshape((z, *layout.shape[1:], 3))
    return raw.reshape((z, *layout.shape[1:]))


def _raw_slices(tif: tifffile.TiffFile, layout: Layout, path: Path) -> Iterator[np.ndarray]:
    """Each slice as stored, shaped (1, Y, X[, channels]): one page at a time where possible."""
    series = tif.series[0]
    pages = list(series.pages)
    if len(pages) == layout.shape[0] and None not in pages:
        for page in pages:
            with reading(path):
                raw = page.asarray()
            yield _as_zyx(raw, series.keyframe.axes, layout, 1)
        return
    log.debug("%s: slices are not one page each; reading the whole stack", path)
    with reading(path):
        stack = _as_zyx(series.asarray(), layout.axes, layout, layout.shape[0])
    for index in range(len(stack)):
        yield stack[index : index + 1]


def _grey(raw: np.ndarray) -> np.ndarray:
    """Stored values as float32 grey levels (colour -> luminance), not yet scaled."""
    if raw.ndim == 4:
        return raw[..., :3].astype(np.float32) @ _LUMA
    return raw.astype(np.float32)


def _needs_range(layout: Layout) -> bool:
    """Whether scaling depends on the stack's values (floats and signed integers)."""
    return layout.dtype.kind in "if"


def _scaling(layout: Layout, low: float, high: float, path: Path) -> tuple[float, float]:
    """(offset, factor) with (value - offset) * factor in [0, 1] for the whole stack."""
    if layout.dtype.kind == "b":
        return 0.0, 1.0
    if layout.dtype.kind == "u" or (layout.dtype.kind == "i" and low >= 0):
        return 0.0, 1.0 / np.iinfo(layout.dtype).max
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{path}: holds NaN or infinite pixel values")
    if layout.dtype.kind == "f" and 0.0 <= low and high <= 1.0:
        return 0.0, 1.0
    return low, (1.0 / (high - low) if high > low else 0.0)  # constant stack -> zeros


def _normalise(grey: np.ndarray, layout: Layout, scaling: tuple[float, float]) -> np.ndarray:
    offset, factor = scaling
    grey -= offset
    grey *= factor
    np.clip(grey, 0.0, 1.0, out=grey)
    return 1.0 - grey if layout.kind == "inverted" else grey


def read_stack(path: PathLike) -> np.ndarray:
    """Read an image stack as float32 (Z, Y, X) in [0, 1]; a 2-D image gives Z = 1.

    Unsigned integers are divided by their dtype's maximum (uint8 by 255), signed ones too
    unless they hold negative values; floats are kept when already within [0, 1]; anything
    else is min-max scaled over the whole stack (a constant stack gives zeros). RGB(A) and
    palette images become grey luminance (ITU-R BT.601).
    """
    path = Path(path)
    with open_stack(path) as (tif, layout), reading(path):
        raw = tif.series[0].asarray()
    grey = _grey(_as_zyx(raw, layout.axes, layout, layout.shape[0]))
    del raw
    low, high = (float(grey.min()), float(grey.max())) if _needs_range(layout) else (0.0, 1.0)
    return _normalise(grey, layout, _scaling(layout, low, high, path))


def stack_shape(path: PathLike) -> tuple[int, int, int]:
    """(Z, Y, X) of a stack, from its TIFF structure alone (no pixel data is read)."""
    with open_stack(path) as (_, layout):
        return layout.shape


def iter_slices(path: PathLike) -> Iterator[np.ndarray]:
    """Yield each slice as float32 (Y, X) in [0, 1], scaled as read_stack, one page at a time.

    Floats and signed integers need the stack's range first: one extra pass over the pages.
    """
    path = Path(path)
    with open_stack(path) as (tif, layout):
        scaling = _scaling_of(tif, layout, path)
        for raw in _raw_slices(tif, layout, path):
            yield _normalise(_grey(raw), layout, scaling)[0]


def read_labels(path: PathLike, foreground: int | str) -> np.ndarray:
    """Read a label stack as a bool (Z, Y, X) foreground mask.

    ``foreground`` an integer: mask = (label == foreground), e.g. 255 for ISBI's cell interior;
    InputError when no pixel has that value (a wrong foreground, never a usable ground truth).
    ``foreground="color"``: for RGB (or palette) labels, any coloured pixel is foreground,
    where coloured means a channel spread above COLOUR_TOLERANCE of the full scale.
    """
    path = Path(path)
    by_colour = isinstance(foreground, str) and foreground == "color"
    by_value = isinstance(foreground, (int, np.integer)) and not isinstance(foreground, bool)
    if not (by_colour or by_value):
        raise InputError(f"foreground must be a label value (an integer) or 'color', got {foreground!r}")
    with open_stack(path) as (tif, layout), reading(path):
        raw = tif.series[0].asarray()
    if by_colour:
        if layout.planes_as_slices:
            raise InputError(
                f"{path}: one planar RGB page is read as {layout.shape[0]} grey slices, as tifffile.imread "
                "gives it; store colour labels with tifffile.imwrite(path, rgb, photometric='rgb', "
                "planarconfig='contig') on (Z, Y, X, 3) data, or give the foreground label value"
            )
        if layout.kind not in ("rgb", "palette"):
            raise InputError(
                f"{path}: foreground 'color' needs RGB labels, but these are "
                f"single-channel {layout.dtype}; give the foreground label value"
            )
        return _coloured(_as_zyx(raw, layout.axes, layout, layout.shape[0]), layout.dtype)
    if layout.kind == "rgb":
        raise InputError(f"{path}: labels are RGB; use foreground 'color', not {foreground!r}")
    return foreground_mask(raw.reshape(layout.shape), foreground, path, "pixel")


def foreground_mask(raw: np.ndarray, foreground: int, source: PathLike, unit: str = "voxel") -> np.ndarray:
    """``raw == foreground``; InputError naming the values present when no ``unit`` has that value
    (a wrong foreground, never a usable ground truth). TIFF stacks and volumes alike."""
    mask = raw == foreground
    if not mask.any():
        values = np.unique(raw)
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise InputError(f"{source}: no {unit} has the foreground value {foreground} (values present: {shown})")
    return mask


def read_label_values(path: PathLike) -> np.ndarray:
    """A single-channel label stack's stored values, (Z, Y, X) (a napari labels layer: 0 unpainted)."""
    path = Path(path)
    with open_stack(path) as (tif, layout), reading(path):
        _refuse_rgb_values(layout, path)
        raw = tif.series[0].asarray()
    return raw.reshape(layout.shape)


def iter_label_values(path: PathLike) -> Iterator[np.ndarray]:
    """:func:`read_label_values` one (Y, X) slice at a time (one page at a time where possible)."""
    path = Path(path)
    with open_stack(path) as (tif, layout):
        _refuse_rgb_values(layout, path)
        for raw in _raw_slices(tif, layout, path):
            yield raw.reshape(layout.shape[1:])


def _refuse_rgb_values(layout: Layout, path: Path) -> None:
    if layout.kind == "rgb":
        raise InputError(f"{path}: labels are RGB; partly labelled data needs one label value per pixel")


def _coloured(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    full = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
    channels = rgb[..., :3].astype(np.float32)
    mask = channels.max(axis=-1) - channels.min(axis=-1) > COLOUR_TOLERANCE * full
    if rgb.shape[-1] == 4:
        mask &= rgb[..., 3] > 0  # a fully transparent pixel is background
    return mask


def stack_scaling(path: PathLike) -> tuple[float, float]:
    """The (offset, factor) that iter_slices applies to the values of ``path`` (for read_slices).

    Floats and signed integers need the stack's range: one pass over the pages.
    """
    path = Path(path)
    with open_stack(path) as (tif, layout):
        return _scaling_of(tif, layout, path)


def _scaling_of(tif, layout: Layout, path: Path) -> tuple[float, float]:
    """The stack's (offset, factor), after a pass over its pages where the range matters."""
    low, high = np.inf, -np.inf
    if _needs_range(layout):
        for raw in _raw_slices(tif, layout, path):
            grey = _grey(raw)
            low = float(np.minimum(low, grey.min()))  # np.minimum keeps a NaN
            high = float(np.maximum(high, grey.max()))
    return _scaling(layout, low, high, path)


def read_slices(path: PathLike, start: int, stop: int, scaling: tuple[float, float]) -> np.ndarray:
    """Slices ``start:stop`` as float32 (n, Y, X) in [0, 1], scaled with ``scaling`` (stack_scaling's)."""
    path = Path(path)
    with open_stack(path) as (tif, layout):
        series = tif.series[0]
        pages = list(series.pages)
        with reading(path):
            if len(pages) == layout.shape[0] and None not in pages:
                raw = np.concatenate(
                    [_as_zyx(page.asarray(), series.keyframe.axes, layout, 1) for page in pages[start:stop]]
                )
            else:
                raw = _as_zyx(series.asarray(), layout.axes, layout, layout.shape[0])[start:stop]
    return _normalise(_grey(raw), layout, scaling)


def read_metadata(path: PathLike) -> dict:
    """The ``metadata`` dict a StackWriter stored in ``path``; {} when there is none."""
    path = Path(path)
    with open_stack(path) as (tif, _), reading(path):
        shaped = tif.shaped_metadata
    stored = shaped[0].get("dcn_ray") if shaped else None
    return dict(stored) if isinstance(stored, dict) else {}
