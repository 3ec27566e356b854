"""TIFF stacks in and out: the only TIFF-aware module of dcn-ray.

A stack is a numpy array shaped (Z, Y, X): images as float32 in [0, 1], masks as bool.
Every problem with a user's file raises :class:`InputError` with one line naming the file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import tifffile
from tifffile import PHOTOMETRIC

from dcn_ray.errors import InputError

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
    """Raise InputError unless ``path`` is a readable file that starts like a TIFF."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a TIFF file")
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
            layout = _layout(tif, path)
            _check_extent(tif, path)
        yield tif, layout
    finally:
        tif.close()


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


# ---------------------------------------------------------------- writing


class StackWriter:
    """Write a stack one slice (page) at a time, atomically.

    Pages go to a hidden ``.<name>.partial-<random>`` file beside ``path`` (zlib-compressed),
    which is renamed onto ``path`` when the ``with`` block ends cleanly and removed otherwise.
    ``metadata`` (a JSON-serialisable dict) is stored in the first page's ImageDescription,
    in tifffile's JSON form, so ``tifffile.imread`` gives back (Z, Y, X); see read_metadata.
    Pages are uint8, uint16 or float32 as given; bool pages are stored as uint8 0/255.
    Set ``bigtiff`` for stacks that may exceed 4 GB.

    >>> with StackWriter("out.tif", metadata={"model": "best"}) as writer:  # doctest: +SKIP
    ...     for mask in masks:
    ...         writer.write(mask)
    """

    def __init__(self, path: PathLike, *, metadata: dict | None = None, bigtiff: bool = False):
        self.path = Path(path)
        self._metadata = dict(metadata or {})
        try:
            json.dumps(self._metadata)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
        self._bigtiff = bigtiff
        self._tmp: Path | None = None
        self._writer: tifffile.TiffWriter | None = None
        self._page: tuple[tuple[int, ...], np.dtype] | None = None
        self._count = 0

    def __enter__(self) -> StackWriter:
        if not self.path.parent.is_dir():
            raise InputError(f"{self.path}: the output folder {self.path.parent} does not exist")
        self._tmp = self.path.parent / f".{self.path.name}.partial-{secrets.token_hex(4)}"
        self._writer = tifffile.TiffWriter(self._tmp, bigtiff=self._bigtiff)
        return self

    def write(self, slice_2d: np.ndarray) -> None:
        """Append one (Y, X) page; every page must have the first one's shape and dtype."""
        if self._writer is None:
            raise ValueError("StackWriter.write must be called inside its with block")
        page = np.asarray(slice_2d)
        if page.dtype == np.bool_:
            page = page.astype(np.uint8) * np.uint8(255)
        if page.ndim != 2 or page.dtype not in _PAGE_DTYPES:
            raise ValueError(f"a page must be 2-D uint8, uint16, float32 or bool, got {page.ndim}-D {page.dtype}")
        if self._page is None:
            self._page = (page.shape, page.dtype)
        elif (page.shape, page.dtype) != self._page:
            raise ValueError(
                f"page {self._count} is {page.shape} {page.dtype}, but the first "
                f"page was {self._page[0]} {self._page[1]}"
            )
        description = self._description(1) if self._count == 0 else None
        self._writer.write(page, photometric="minisblack", compression="zlib", metadata=None, description=description)
        self._count += 1

    def _description(self, n_pages: int) -> str:
        assert self._page is not None
        return json.dumps({"shape": [n_pages, *self._page[0]], "dcn_ray": self._metadata})

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        tmp, writer = self._tmp, self._writer
        assert tmp is not None and writer is not None
        self._writer = None
        try:
            if exc_type is not None:
                with suppress(Exception):
                    writer.close()
                return
            writer.close()
            if self._count == 0:
                raise ValueError(f"{self.path}: no slice was written")
            with tifffile.TiffFile(tmp, mode="r+b") as tif:  # now the number of pages is known
                tif.pages[0].tags["ImageDescription"].overwrite(self._description(self._count))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


def write_stack(path: PathLike, array: np.ndarray, *, metadata: dict | None = None) -> None:
    """Write a whole (Z, Y, X) or (Y, X) array atomically with StackWriter."""
    stack = np.asarray(array)
    if stack.ndim == 2:
        stack = stack[np.newaxis]
    if stack.ndim != 3 or 0 in stack.shape:
        raise ValueError(f"write_stack needs a non-empty (Z, Y, X) array, got shape {stack.shape}")
    with StackWriter(path, metadata=metadata, bigtiff=stack.nbytes > _BIGTIFF_ABOVE) as writer:
        for page in stack:
            writer.write(page)


def read_metadata(path: PathLike) -> dict:
    """The ``metadata`` dict a StackWriter stored in ``path``; {} when there is none."""
    path = Path(path)
    with _open(path) as (tif, _), _reading(path):
        shaped = tif.shaped_metadata
    stored = shaped[0].get("dcn_ray") if shaped else None
    return dict(stored) if isinstance(stored, dict) else {}
