"""Open any input volume by path and read it lazily, block by block, as float32 (Z, Y, X) in [0, 1].

Accepted paths (the same for ``predict``, ``--labels`` and the training data of a job):

- ``stack.tif``: a TIFF stack or image (:mod:`dcn_ray.io.tiff`);
- ``image.ome.zarr``: an OME-Zarr image, NGFF 0.4 (zarr v2) or 0.5 (zarr v3), read with
  ome-zarr-py; ``level`` picks the pyramid level (0, the full resolution, by default);
- ``volume.zarr`` (or ``store.zarr/path/to/array``): a plain zarr array, v2 or v3;
- ``file.h5:/volumes/raw``: a dataset of an HDF5 file (CREMI layout), read with h5py; a file
  with a single image dataset may be given alone.

Arrays of 2 dimensions are one slice (Z = 1); leading axes of length 1 (OME-Zarr's t and c) are
dropped. Values are scaled to [0, 1] as :func:`dcn_ray.io.tiff.read_stack` scales TIFF pages:
unsigned integers by their type's maximum, signed ones too unless negative, floats kept within
[0, 1], anything else min-max scaled over the whole volume (one pass, chunk by chunk).
Every problem with the path raises :class:`InputError` with one line naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dcn_ray.errors import InputError
from dcn_ray.io import tiff
from dcn_ray.io.stores import Stored, describe_hdf5, describe_zarr, is_hdf5, read_region, split_hdf5

Shape3 = tuple[int, int, int]
DEFAULT_AXES = ({"name": "z", "type": "space"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"})
_SCAN_VOXELS = 2**25  # voxels read at a time when a float volume's range is needed
ALL = slice(None)


@dataclass(frozen=True)
class Volume:
    """A (Z, Y, X) volume opened by path: shape, chunks, axes and scale; the data stays on disk.

    Plain data only, so it pickles to Ray workers, which read their own blocks with :meth:`read`.
    """

    source: str  # as the user gave it
    kind: str  # "tiff", "ome-zarr", "zarr" or "hdf5"
    location: str  # the file or the store's folder, absolute (Ray workers may run elsewhere)
    array: str  # the array's path inside the store or file ("" for TIFF)
    shape: Shape3
    dtype: str  # as stored
    chunks: Shape3  # as stored ((1, Y, X) for TIFF pages)
    axes: tuple[dict, ...] = DEFAULT_AXES  # NGFF axis dicts of z, y, x
    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    lead: int = 0  # leading axes of length 1 dropped from the stored array
    flat: bool = False  # stored as one 2-D slice
    scaling: tuple[float, float] = (0.0, 1.0)  # (offset, factor) onto [0, 1]
    version: str | None = None  # the NGFF version of an OME-Zarr image

    def raw(self, z: slice = ALL, rows: slice = ALL, cols: slice = ALL) -> np.ndarray:
        """Stored values of ``[z, rows, cols]``, shaped (z, y, x) (not for TIFF)."""
        key = (0,) * self.lead + ((rows, cols) if self.flat else (z, rows, cols))
        data = read_region(self.kind, self.location, self.array, key, self.source)
        return data[np.newaxis][z] if self.flat else data

    def read(self, z: slice = ALL, rows: slice = ALL, cols: slice = ALL) -> np.ndarray:
        """``[z, rows, cols]`` as float32 in [0, 1] (copied into memory)."""
        if self.kind == "tiff":
            first, last, _ = z.indices(self.shape[0])
            return tiff.read_slices(self.location, first, last, self.scaling)[:, rows, cols]
        grey = self.raw(z, rows, cols).astype(np.float32)
        offset, factor = self.scaling
        grey -= offset  # the same float32 operations as for TIFF pages: the same values
        grey *= factor
        return np.clip(grey, 0.0, 1.0, out=grey)

    def slices(self) -> Iterator[np.ndarray]:
        """Each slice (Y, X) in turn, as :meth:`read` gives it (TIFF: streamed page by page)."""
        if self.kind == "tiff":
            yield from tiff.iter_slices(self.location)
            return
        for index in range(self.shape[0]):
            yield self.read(slice(index, index + 1))[0]


def open_volume(source: str | Path, level: int = 0, *, scan: bool = True) -> Volume:
    """Open ``source`` (see the module doc) at pyramid ``level``; InputError if unusable.

    ``scan=False`` skips finding the value range of float and signed volumes (a pass over the
    data): the Volume then tells shape, chunks, axes and scale, and :meth:`Volume.raw` only.
    """
    text = str(source)
    if level < 0:
        raise InputError(f"--level {level}: must be 0 or more")
    file, dataset = split_hdf5(text)
    path = Path(file)
    if path.is_dir():
        volume = _from_stored(text, describe_zarr(text, path, level))
    elif path.is_file() and is_hdf5(path):
        volume = _from_stored(text, describe_hdf5(text, path, dataset))
    elif dataset is not None:
        raise InputError(f"{text}: {file} is not an HDF5 file" if path.exists() else f"{file}: no such file")
    else:
        shape = tiff.stack_shape(path)
        volume = Volume(text, "tiff", str(path.absolute()), "", shape, "", (1, *shape[1:]))
    if level and volume.kind != "ome-zarr":
        raise InputError(f"--level {level}: {text} has one level only (levels are for OME-Zarr images)")
    if not scan:
        return volume
    if volume.kind == "tiff":
        return replace(volume, scaling=tiff.stack_scaling(path))
    return replace(volume, scaling=_scaling(volume))


def volume_shape(source: str | Path, level: int = 0) -> Shape3:
    """(Z, Y, X) of any input, from its metadata alone."""
    return open_volume(source, level, scan=False).shape


def input_slices(source: str | Path, level: int = 0) -> Iterator[np.ndarray]:
    """Each slice of any input as float32 (Y, X) in [0, 1], one at a time (TIFF as iter_slices)."""
    if is_tiff(source):
        return tiff.iter_slices(source)
    return open_volume(source, level).slices()


def read_volume(source: str | Path, level: int = 0) -> np.ndarray:
    """The whole volume as float32 (Z, Y, X) in [0, 1]."""
    if is_tiff(source):
        return tiff.read_stack(source)
    return open_volume(source, level).read()


def read_label_volume(source: str | Path, foreground: int | str, level: int = 0) -> np.ndarray:
    """A label volume as a bool (Z, Y, X) foreground mask (see :func:`dcn_ray.io.tiff.read_labels`)."""
    if is_tiff(source):
        return tiff.read_labels(source, foreground)
    volume = open_volume(source, level)
    if isinstance(foreground, str) or isinstance(foreground, bool) or not isinstance(foreground, (int, np.integer)):
        raise InputError(
            f"{source}: labels of {volume.kind} need an integer foreground value, got {foreground!r} "
            "('color' is for RGB TIFF labels)"
        )
    return tiff.foreground_mask(volume.raw(), int(foreground), source, "voxel")


def read_label_values(source: str | Path, level: int = 0) -> np.ndarray:
    """A label volume's stored values, (Z, Y, X), for partly labelled data (:mod:`dcn_ray.core.partial`)."""
    if is_tiff(source):
        return tiff.read_label_values(source)
    return _integer_labels(source, level).raw()


def label_value_slices(source: str | Path, level: int = 0) -> Iterator[np.ndarray]:
    """:func:`read_label_values` one (Y, X) slice at a time: for volumes larger than memory."""
    if is_tiff(source):
        yield from tiff.iter_label_values(source)
        return
    volume = _integer_labels(source, level)
    for z in range(volume.shape[0]):
        yield volume.raw(slice(z, z + 1))[0]


def _integer_labels(source: str | Path, level: int) -> Volume:
    volume = open_volume(source, level, scan=False)
    if np.dtype(volume.dtype).kind not in "biu":
        raise InputError(f"{source}: partly labelled data needs integer label values, got {volume.dtype}")
    return volume


def is_tiff(source: str | Path) -> bool:
    """Whether ``source`` names a TIFF (a file that is neither HDF5 nor a folder, nor has a ``:/dataset``)."""
    file, dataset = split_hdf5(str(source))
    path = Path(file)
    return dataset is None and not path.is_dir() and not (path.is_file() and is_hdf5(path))


def is_zarr_path(path: str | Path) -> bool:
    """Whether an output path names a zarr store (``.zarr``, e.g. ``out.ome.zarr``)."""
    return Path(path).suffix.lower() == ".zarr"


# ----------------------------------------------------------------------------- formats


def _from_stored(text: str, stored: Stored) -> Volume:
    """Map a stored array onto (Z, Y, X): 2-D is one slice, leading axes of length 1 are dropped."""
    dtype, shape, lead = np.dtype(stored.dtype), stored.shape, stored.spatial
    if dtype.kind not in "buif":
        raise InputError(f"{text}: unsupported value type {dtype}")
    if len(shape) - lead not in (2, 3) or any(n != 1 for n in shape[:lead]):
        raise InputError(f"{text}: has shape {shape}; expected a 2-D image or a 3-D volume (Z, Y, X)")
    if 0 in shape:
        raise InputError(f"{text}: is empty (shape {shape})")
    flat = len(shape) - lead == 2
    axes, scale = stored.axes or DEFAULT_AXES[-(len(shape) - lead) :], stored.scale or (1.0,) * (len(shape) - lead)
    if flat:
        axes, scale = (DEFAULT_AXES[0], *axes), (1.0, *scale)
    return Volume(
        text, stored.kind, stored.location, stored.array, ((1,) if flat else ()) + shape[lead:], dtype.str,
        ((1,) if flat else ()) + stored.chunks[lead:], tuple(axes), tuple(scale), lead, flat,
        version=stored.version,
    )  # type: ignore[arg-type]  # fmt: skip


def _scaling(volume: Volume) -> tuple[float, float]:
    """(offset, factor) onto [0, 1], by the rules of TIFF pages (see the module doc)."""
    dtype = np.dtype(volume.dtype)
    if dtype.kind == "b":
        return 0.0, 1.0
    if dtype.kind == "u":
        return 0.0, 1.0 / np.iinfo(dtype).max
    low, high = np.inf, -np.inf
    for piece in _pieces(volume):
        values = volume.raw(*piece)
        low, high = float(np.minimum(low, values.min())), float(np.maximum(high, values.max()))
    if dtype.kind == "i" and low >= 0:
        return 0.0, 1.0 / np.iinfo(dtype).max
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{volume.source}: holds NaN or infinite values")
    if dtype.kind == "f" and 0.0 <= low and high <= 1.0:
        return 0.0, 1.0
    return low, (1.0 / (high - low) if high > low else 0.0)


def _pieces(volume: Volume) -> Iterator[tuple[slice, slice, slice]]:
    """Chunk-aligned slabs of about _SCAN_VOXELS voxels (at least one row of chunks) covering the volume."""
    depth, height, width = volume.shape
    chunk_z, chunk_y, _ = volume.chunks
    rows = max(chunk_y, _SCAN_VOXELS // (chunk_z * width) // chunk_y * chunk_y)
    for z in range(0, depth, chunk_z):
        for y in range(0, height, rows):
            yield slice(z, z + chunk_z), slice(y, y + rows), ALL
