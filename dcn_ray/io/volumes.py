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

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from dcn_ray.errors import InputError
from dcn_ray.io import tiff

log = logging.getLogger(__name__)

Shape3 = tuple[int, int, int]
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
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
        with _stored(self) as stored:
            data = np.asarray(stored[key])
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
    file, dataset = _split_hdf5(text)
    path = Path(file)
    if path.is_dir():
        volume = _open_zarr(text, path, level)
    elif path.is_file() and _is_hdf5(path):
        volume = _open_hdf5(text, path, dataset)
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
        return _with(volume, scaling=tiff.stack_scaling(path))
    return _with(volume, scaling=_scaling(volume))


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
    raw = volume.raw()
    mask = raw == foreground
    if not mask.any():
        values = np.unique(raw)
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise InputError(f"{source}: no voxel has the foreground value {foreground} (values present: {shown})")
    return mask


def is_tiff(source: str | Path) -> bool:
    """Whether ``source`` names a TIFF (a file that is neither HDF5 nor a folder, nor has a ``:/dataset``)."""
    file, dataset = _split_hdf5(str(source))
    path = Path(file)
    return dataset is None and not path.is_dir() and not (path.is_file() and _is_hdf5(path))


def is_zarr_path(path: str | Path) -> bool:
    """Whether an output path names a zarr store (``.zarr``, e.g. ``out.ome.zarr``)."""
    return Path(path).suffix.lower() == ".zarr"


# ----------------------------------------------------------------------------- formats


def _split_hdf5(text: str) -> tuple[str, str | None]:
    """``file.h5:/a/b`` -> (``file.h5``, ``/a/b``); anything else -> (text, None)."""
    if Path(text).exists() or ":" not in text:
        return text, None
    for index, char in enumerate(text):
        if char == ":" and (Path(text[:index]).is_file() or text[:index].lower().endswith(HDF5_SUFFIXES)):
            return text[:index], text[index + 1 :] or "/"
    return text, None


def _is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def _open_hdf5(text: str, path: Path, dataset: str | None) -> Volume:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if dataset is None:
                found: list[str] = []
                handle.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
                images = [name for name in found if handle[name].ndim >= 2]
                if len(images) != 1:
                    listed = ", ".join("/" + name for name in images[:5]) or "no image dataset"
                    raise InputError(f"{text}: name the dataset, as {path}:/volumes/raw (this file holds {listed})")
                dataset = "/" + images[0]
            item = handle.get(dataset)
            if not isinstance(item, h5py.Dataset):
                what = "a group, not a dataset" if item is not None else "no such dataset"
                raise InputError(f"{text}: {dataset} is {what} in {path}")
            stored, chunks = tuple(item.shape), tuple(item.chunks or item.shape)
            dtype = item.dtype
            resolution = item.attrs.get("resolution")
    except OSError as error:
        raise InputError(f"{text}: cannot read the HDF5 file ({str(error).splitlines()[0]})") from None
    volume = _layout(text, "hdf5", str(path.absolute()), dataset, stored, chunks, dtype)
    if resolution is not None and np.size(resolution) == 3:  # CREMI: (z, y, x) in nm
        axes = tuple({**axis, "unit": "nanometer"} for axis in DEFAULT_AXES)
        return _with(volume, scale=tuple(float(v) for v in np.ravel(resolution)), axes=axes)
    return volume


def _open_zarr(text: str, path: Path, level: int) -> Volume:
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as error:  # zarr raises several types for a folder that is no store
        raise InputError(f"{text}: is a folder but not a zarr store ({type(error).__name__})") from None
    if isinstance(node, zarr.Array):
        return _layout(text, "zarr", str(path.absolute()), "", node.shape, node.chunks, node.dtype)
    attrs = node.attrs.asdict()
    if "multiscales" not in attrs.get("ome", attrs):
        arrays = ", ".join(sorted(name for name, _ in node.arrays())[:5]) or "none"
        raise InputError(
            f"{text}: is a zarr group without OME-Zarr multiscales; give one of its arrays ({arrays}) as {path}/NAME"
        )
    return _open_ome(text, path, level, node.metadata.zarr_format)


def _open_ome(text: str, path: Path, level: int, zarr_format: int) -> Volume:
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    with _quiet("ome_zarr"):
        try:
            location = parse_url(path, fmt=FormatV04() if zarr_format == 2 else FormatV05())
            nodes = [node for node in Reader(location)() if node.load(Multiscales)] if location else []
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(f"{text}: invalid OME-Zarr metadata ({str(error).splitlines()[0][:160]})") from None
    if not nodes:
        raise InputError(f"{text}: no OME-Zarr image found")
    node = nodes[0]
    paths = node.load(Multiscales).datasets
    if level >= len(paths):
        raise InputError(f"--level {level}: {text} has {len(paths)} level(s), 0 to {len(paths) - 1}")
    array = zarr.open_array(store=str(path), path=paths[level], mode="r")
    volume = _layout(text, "ome-zarr", str(path.absolute()), paths[level], array.shape, array.chunks, array.dtype)
    axes = node.metadata.get("axes") or []
    names = [axis.get("name") for axis in axes]
    if len(axes) != array.ndim or names[-2:] != ["y", "x"]:
        raise InputError(f"{text}: OME-Zarr axes {names} do not end in y, x for an array of {array.ndim} dimensions")
    transforms = (node.metadata.get("coordinateTransformations") or [None] * len(paths))[level] or []
    scales = [t["scale"] for t in transforms if t.get("type") == "scale"]
    full_scale = scales[0] if scales else [1.0] * array.ndim
    spatial = [i for i, name in enumerate(names) if name in ("z", "y", "x")]
    picked_axes = tuple(dict(axes[i]) for i in spatial)
    picked_scale = [float(full_scale[i]) for i in spatial]
    if volume.flat:
        picked_axes, picked_scale = (DEFAULT_AXES[0], *picked_axes[-2:]), [1.0, *picked_scale[-2:]]
    return _with(volume, axes=picked_axes, scale=tuple(picked_scale), version=location.version)


def _layout(text: str, kind: str, location: str, array: str, stored: tuple, chunks: tuple, dtype: Any) -> Volume:
    """Map a stored shape onto (Z, Y, X): 2-D is one slice, leading axes of length 1 are dropped."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "buif":
        raise InputError(f"{text}: unsupported value type {dtype}")
    if len(stored) < 2 or any(n != 1 for n in stored[:-3]):
        raise InputError(f"{text}: has shape {tuple(stored)}; expected a 2-D image or a 3-D volume (Z, Y, X)")
    if 0 in stored:
        raise InputError(f"{text}: is empty (shape {tuple(stored)})")
    lead = max(0, len(stored) - 3)
    flat = len(stored) == 2
    shape = (1, *stored) if flat else tuple(stored[lead:])
    chunk = (1, *chunks) if flat else tuple(chunks[lead:])
    return Volume(text, kind, location, array, shape, dtype.str, chunk, lead=lead, flat=flat)  # type: ignore[arg-type]


@contextmanager
def _stored(volume: Volume) -> Iterator[Any]:
    """The stored array of ``volume``, opened for reading."""
    if volume.kind == "hdf5":
        import h5py

        with h5py.File(volume.location, "r") as handle:
            yield handle[volume.array]
        return
    import zarr

    yield zarr.open_array(store=volume.location, path=volume.array, mode="r")


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


def _with(volume: Volume, **changes: Any) -> Volume:
    return replace(volume, **changes)


@contextmanager
def _quiet(name: str) -> Iterator[None]:
    """ome-zarr-py logs every attribute it reads at INFO: keep that off dcn-ray's console."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(before)
