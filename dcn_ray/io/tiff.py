"""TIFF stacks in and out: the only TIFF-aware module of dcn-ray.

A stack is a numpy array shaped (Z, Y, X): images as float32 in [0, 1], masks as bool.
Every problem with a user's file raises :class:`InputError` with one line naming the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import tifffile
from tifffile import PHOTOMETRIC, PLANARCONFIG

from dcn_ray.errors import InputError
from dcn_ray.io.paths import input_file

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: A label pixel is "coloured" when its channel spread max(R, G, B) - min(R, G, B) exceeds this
#: fraction of the full scale (25 of 255 for uint8): grey, white and black pixels, including
#: slightly tinted ones from lossy compression, are background. Fully transparent pixels too.
COLOUR_TOLERANCE = 0.1

_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R BT.601 grey, as PIL's "L" mode
_PAGE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
_BIGTIFF_ABOVE = 3 * 2**30  # write_stack switches to BigTIFF above this many pixel bytes


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Layout:
    """How the single image series of a TIFF maps onto a (Z, Y, X) stack."""

    shape: tuple[int, int, int]
    axes: str  # tifffile's axes of the series, e.g. "QYX", "YXS"
    kind: str  # "grey", "inverted" (min-is-white), "rgb" or "palette"
    dtype: np.dtype  # of the grey or colour values (the colormap's for palette images)
    colormap: np.ndarray | None = None  # (3, N) for palette images
    #: One planar RGB(A) page read as 3 or 4 slices (see _layout).
    planes_as_slices: bool = False


class _ErrorLog(logging.Filter):
    """Takes what tifffile logs at ERROR level (it logs, rather than raises, some damage) off
    the log, so that the InputError made of it is the one line the user sees."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        self.messages.append(record.getMessage())
        return False


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn tifffile's exceptions and logged errors into one InputError naming ``path``."""
    errors = _ErrorLog()
    tiff_log = logging.getLogger("tifffile")
    tiff_log.addFilter(errors)
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # tifffile and its codecs raise many types for damaged data
        lines = str(exc).strip().splitlines() or [""]
        raise InputError(f"{path}: damaged or truncated TIFF ({type(exc).__name__}: {lines[0]})") from exc
    finally:
        tiff_log.removeFilter(errors)
    if errors.messages:
        raise InputError(f"{path}: damaged or truncated TIFF ({errors.messages[0]})")


def _check_file(path: Path) -> None:
    """Raise InputError unless ``path`` is a readable regular file that starts like a TIFF."""
    input_file(path, "TIFF file")
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror})") from exc
    if not head:
        raise InputError(f"{path}: is empty (0 bytes), not a TIFF file")
    if head not in _TIFF_MAGIC:
        raise InputError(f"{path}: is not a TIFF file (it starts with {head!r})")


@contextmanager
def _open(path: PathLike) -> Iterator[tuple[tifffile.TiffFile, _Layout]]:
    """Open a TIFF stack, check it whole and give its layout; InputError when it is unusable."""
    path = Path(path)
    _check_file(path)
    with _reading(path):
        tif = tifffile.TiffFile(path)
    try:
        with _reading(path):
            _check_pages(tif, path)
            layout = _layout(tif, path)
            _check_extent(tif, path)
        yield tif, layout
    finally:
        tif.close()


def _check_pages(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse pages of different shapes or types, which tifffile would split, cut or refuse obscurely.

    Reduced-resolution pages (previews, pyramid levels) are not slices and are left out.
    """
    first: tuple[int, tuple, object] | None = None
    for index, page in enumerate(tif.pages):
        if page is None or getattr(page, "subfiletype", 0) & 1:
            continue
        key = (tuple(page.shape), page.dtype)
        if first is None:
            first = (index, *key)
        elif key != first[1:]:
            raise InputError(
                f"{path}: pages of different shapes or types (page {first[0]} is {_page_text(*first[1:])}, "
                f"page {index} is {_page_text(*key)}); expected one stack of equal slices"
            )


def _page_text(shape: tuple, dtype: object) -> str:
    return f"{' x '.join(str(n) for n in shape)} {dtype}"


def _layout(tif: tifffile.TiffFile, path: Path) -> _Layout:
    if len(tif.series) != 1:
        shapes = ", ".join(str(s.shape) for s in tif.series[:4])
        raise InputError(
            f"{path}: holds {len(tif.series)} images of different shapes or types "
            f"({shapes}); expected one stack of equal slices"
        )
    series = tif.series[0]
    shape, axes, page = tuple(series.shape), series.axes, series.keyframe
    dtype = np.dtype(series.dtype)
    if 0 in shape:
        raise InputError(f"{path}: empty stack (shape {shape})")
    if dtype.kind not in "buif":
        raise InputError(f"{path}: unsupported pixel type {dtype}")
    kind, colormap = "grey", None
    if _planes_as_slices(page, axes, shape):
        # tifffile.imwrite stores a (3 or 4, Y, X) array given without photometric as one planar
        # RGB(A) page, and tifffile.imread gives it back as (3 or 4, Y, X): read it as those slices,
        # which is what the user wrote (a true planar colour image is indistinguishable from it).
        log.debug("%s: one planar RGB(A) page of shape %s is read as %d slices", path, shape, shape[0])
        return _Layout(shape, axes, "grey", dtype, planes_as_slices=True)  # type: ignore[arg-type]
    if page.photometric in (PHOTOMETRIC.RGB, PHOTOMETRIC.YCBCR) and "S" in axes:
        if shape[axes.index("S")] not in (3, 4):
            raise InputError(f"{path}: RGB image with {shape[axes.index('S')]} channels")
        kind = "rgb"
        shape = tuple(n for n, axis in zip(shape, axes) if axis != "S")
    elif page.photometric == PHOTOMETRIC.PALETTE and page.colormap is not None:
        kind, colormap = "palette", np.asarray(page.colormap)
        dtype = colormap.dtype
    elif page.photometric == PHOTOMETRIC.MINISWHITE:
        kind = "inverted"
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise InputError(
            f"{path}: has {len(shape)}-D images (shape {tuple(series.shape)}, "
            f"axes {axes}); expected a 2-D image or a 3-D stack (Z, Y, X)"
        )
    return _Layout(shape, axes, kind, dtype, colormap)  # type: ignore[arg-type]


def _planes_as_slices(page: tifffile.TiffPage, axes: str, shape: tuple[int, ...]) -> bool:
    """Whether the image is one planar RGB(A) page of 3 or 4 planes (axes SYX): read as slices."""
    return (
        axes == "SYX"
        and page.photometric == PHOTOMETRIC.RGB
        and page.planarconfig == PLANARCONFIG.SEPARATE
        and shape[0] in (3, 4)
    )


def _check_extent(tif: tifffile.TiffFile, path: Path) -> None:
    """Refuse a file whose image data runs past its end (a TIFF whose tail was cut off)."""
    size = os.fstat(tif.filehandle.fileno()).st_size
    series = tif.series[0]
    pages = [*series.pages, *tif.pages]  # walking all of tif.pages also checks the IFD chain
    ends = [o + n for page in pages if page is not None for o, n in zip(page.dataoffsets, page.databytecounts)]
    if series.dataoffset is not None:
        ends.append(series.dataoffset + series.nbytes)
    if ends and max(ends) > size:
        raise InputError(f"{path}: truncated TIFF (its image data runs to byte {max(ends)}, the file has {size} bytes)")


def _as_zyx(raw: np.ndarray, axes: str, layout: _Layout, z: int) -> np.ndarray:
    """Stored data of ``z`` slices -> (z, Y, X), or (z, Y, X, channels) for colour."""
    if layout.kind == "rgb":
        raw = np.moveaxis(raw, axes.index("S"), -1)
        return raw.reshape((z, *layout.shape[1:], raw.shape[-1]))
    if layout.kind == "palette":
        assert layout.colormap is not None
        return np.moveaxis(layout.colormap[:, raw], 0, -1).reshape((z, *layout.shape[1:], 3))
    return raw.reshape((z, *layout.shape[1:]))


def _raw_slices(tif: tifffile.TiffFile, layout: _Layout, path: Path) -> Iterator[np.ndarray]:
    """Each slice as stored, shaped (1, Y, X[, channels]): one page at a time where possible."""
    series = tif.series[0]
    pages = list(series.pages)
    if len(pages) == layout.shape[0] and None not in pages:
        for page in pages:
            with _reading(path):
                raw = page.asarray()
            yield _as_zyx(raw, series.keyframe.axes, layout, 1)
        return
    log.debug("%s: slices are not one page each; reading the whole stack", path)
    with _reading(path):
        stack = _as_zyx(series.asarray(), layout.axes, layout, layout.shape[0])
    for index in range(len(stack)):
        yield stack[index : index + 1]


def _grey(raw: np.ndarray) -> np.ndarray:
    """Stored values as float32 grey levels (colour -> luminance), not yet scaled."""
    if raw.ndim == 4:
        return raw[..., :3].astype(np.float32) @ _LUMA
    return raw.astype(np.float32)


def _needs_range(layout: _Layout) -> bool:
    """Whether scaling depends on the stack's values (floats and signed integers)."""
    return layout.dtype.kind in "if"


def _scaling(layout: _Layout, low: float, high: float, path: Path) -> tuple[float, float]:
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


def _normalise(grey: np.ndarray, layout: _Layout, scaling: tuple[float, float]) -> np.ndarray:
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
    with _open(path) as (tif, layout), _reading(path):
        raw = tif.series[0].asarray()
    grey = _grey(_as_zyx(raw, layout.axes, layout, layout.shape[0]))
    del raw
    low, high = (float(grey.min()), float(grey.max())) if _needs_range(layout) else (0.0, 1.0)
    return _normalise(grey, layout, _scaling(layout, low, high, path))


def stack_shape(path: PathLike) -> tuple[int, int, int]:
    """(Z, Y, X) of a stack, from its TIFF structure alone (no pixel data is read)."""
    with _open(path) as (_, layout):
        return layout.shape


def iter_slices(path: PathLike) -> Iterator[np.ndarray]:
    """Yield each slice as float32 (Y, X) in [0, 1], scaled as read_stack, one page at a time.

    Floats and signed integers need the stack's range first: one extra pass over the pages.
    """
    path = Path(path)
    with _open(path) as (tif, layout):
        low, high = np.inf, -np.inf
        if _needs_range(layout):
            for raw in _raw_slices(tif, layout, path):
                grey = _grey(raw)
                low = float(np.minimum(low, grey.min()))  # np.minimum keeps a NaN
                high = float(np.maximum(high, grey.max()))
        scaling = _scaling(layout, low, high, path)
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
    with _open(path) as (tif, layout), _reading(path):
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
    mask = raw.reshape(layout.shape) == foreground
    if not mask.any():
        values = np.unique(raw)
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise InputError(f"{path}: no pixel has the foreground value {foreground} (values present: {shown})")
    return mask


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
    with _open(path) as (tif, layout):
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
    with _open(path) as (tif, layout):
        series = tif.series[0]
        pages = list(series.pages)
        with _reading(path):
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
    with _open(path) as (tif, _), _reading(path):
        shaped = tif.shaped_metadata
    stored = shaped[0].get("dcn_ray") if shaped else None
    return dict(stored) if isinstance(stored, dict) else {}
