"""Open a TIFF stack and check it whole: one series of equal pages, not truncated, its layout.

Every problem with a user's file raises :class:`InputError` with one line naming the file;
:mod:`dcn_ray.io.tiff` reads the values of a stack opened here.
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

PathLike = Union[str, "os.PathLike[str]"]
log = logging.getLogger(__name__)
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


@dataclass(frozen=True)
class Layout:
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
def reading(path: Path) -> Iterator[None]:
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
def open_stack(path: PathLike) -> Iterator[tuple[tifffile.TiffFile, Layout]]:
    """Open a TIFF stack, check it whole and give its layout; InputError when it is unusable."""
    path = Path(path)
    _check_file(path)
    with reading(path):
        tif = tifffile.TiffFile(path)
    try:
        with reading(path):
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


def _layout(tif: tifffile.TiffFile, path: Path) -> Layout:
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
        return Layout(shape, axes, "grey", dtype, planes_as_slices=True)  # type: ignore[arg-type]
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
    return Layout(shape, axes, kind, dtype, colormap)  # type: ignore[arg-type]


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
