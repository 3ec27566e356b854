"""What a zarr store or an HDF5 file holds: the array to read, its stored shape, chunks, axes, scale.

zarr (v2 and v3) opens plain arrays; ome-zarr-py reads OME-Zarr images (NGFF 0.4 and 0.5); h5py
reads HDF5 datasets named as ``file.h5:/path/to/dataset``. :mod:`dcn_ray.io.volumes` maps what is
found here onto a (Z, Y, X) volume. Every problem raises :class:`InputError` naming the path.
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
from dcn_ray.io.ngff import check_multiscales

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


@dataclass(frozen=True)
class Stored:
    """One stored array, described by its metadata (no voxel is read)."""

    kind: str  # "ome-zarr", "zarr" or "hdf5"
    location: str  # the store's folder or the file, absolute (Ray workers may run elsewhere)
    array: str  # the array's path inside it
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    spatial: int  # index of the first spatial axis (z, or y without z); the axes before must have length 1
    axes: tuple[dict, ...] | None = None  # NGFF axis dicts of the spatial axes
    scale: tuple[float, ...] | None = None  # of the spatial axes
    version: str | None = None  # NGFF version of an OME-Zarr image


def split_hdf5(text: str) -> tuple[str, str | None]:
    """``file.h5:/a/b`` -> (``file.h5``, ``/a/b``); anything else -> (text, None)."""
    if Path(text).exists() or ":" not in text:
        return text, None
    for index, char in enumerate(text):
        if char == ":" and (Path(text[:index]).is_file() or text[:index].lower().endswith(HDF5_SUFFIXES)):
            return text[:index], text[index + 1 :] or "/"
    return text, None


def is_hdf5(path: Path) -> bool:
    import h5py

    try:
        return bool(h5py.is_hdf5(path))
    except OSError:
        return False


def describe_hdf5(text: str, path: Path, dataset: str | None) -> Stored:
    """The dataset ``dataset`` of ``path`` (the file's only image dataset when None)."""
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
            shape, chunks, dtype = tuple(item.shape), tuple(item.chunks or item.shape), item.dtype
            resolution = item.attrs.get("resolution")
    except OSError as error:
        raise InputError(f"{text}: cannot read the HDF5 file ({str(error).splitlines()[0]})") from None
    stored = Stored("hdf5", str(path.absolute()), dataset, shape, chunks, dtype, max(0, len(shape) - 3))
    if resolution is not None and len(shape) == 3 and np.size(resolution) == 3:  # CREMI: (z, y, x) in nm
        axes = tuple({"name": name, "type": "space", "unit": "nanometer"} for name in "zyx")
        return replace(stored, axes=axes, scale=tuple(float(v) for v in np.ravel(resolution)))
    return stored


def describe_zarr(text: str, path: Path, level: int) -> Stored:
    """A plain zarr array, or ``level`` of an OME-Zarr image."""
    import zarr

    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception as error:  # zarr raises several types for a folder that is no store
        raise InputError(f"{text}: is a folder but not a zarr store ({type(error).__name__})") from None
    if isinstance(node, zarr.Array):
        shape = tuple(node.shape)
        return Stored("zarr", str(path.absolute()), "", shape, tuple(node.chunks), node.dtype, max(0, len(shape) - 3))
    attrs = node.attrs.asdict()
    if "multiscales" not in attrs.get("ome", attrs):
        arrays = ", ".join(sorted(name for name, _ in node.arrays())[:5]) or "none"
        raise InputError(
            f"{text}: is a zarr group without OME-Zarr multiscales; give one of its arrays ({arrays}) as {path}/NAME"
        )
    check_multiscales(attrs.get("ome", attrs), text)
    return _describe_ome(text, path, level, node.metadata.zarr_format)


def _describe_ome(text: str, path: Path, level: int, zarr_format: int) -> Stored:
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
    try:
        array = zarr.open_array(store=str(path), path=paths[level], mode="r")
    except Exception as error:  # the level's array is missing or its metadata unreadable
        raise InputError(f"{text}: level {level} (array {paths[level]!r}) cannot be opened ({_first(error)})") from None
    axes = node.metadata.get("axes") or []
    names = [axis.get("name") for axis in axes]
    spatial = [index for index, name in enumerate(names) if name in ("z", "y", "x")]
    if (
        len(axes) != array.ndim
        or names[-2:] != ["y", "x"]
        or spatial != list(range(array.ndim - len(spatial), array.ndim))
    ):
        raise InputError(f"{text}: OME-Zarr axes {names} do not end in (z,) y, x for an array of {array.ndim} dims")
    transforms = (node.metadata.get("coordinateTransformations") or [None] * len(paths))[level] or []
    scales = [t["scale"] for t in transforms if t.get("type") == "scale"]
    scale = tuple(float(scales[0][i]) if scales else 1.0 for i in spatial)
    return Stored(
        "ome-zarr", str(path.absolute()), paths[level], tuple(array.shape), tuple(array.chunks), array.dtype,
        spatial[0], tuple(dict(axes[i]) for i in spatial), scale, location.version,
    )  # fmt: skip


@contextmanager
def open_stored(kind: str, location: str, array: str) -> Iterator[Any]:
    """The stored array, opened for reading (indexing it reads voxels)."""
    if kind == "hdf5":
        import h5py

        with h5py.File(location, "r") as handle:
            yield handle[array]
        return
    import zarr

    yield zarr.open_array(store=location, path=array, mode="r")


def read_region(kind: str, location: str, array: str, key: tuple, source: str) -> np.ndarray:
    """``stored[key]`` as numpy; a failure of the reading library (a corrupt or missing chunk, a
    truncated file, an HDF5 filter error) is an InputError naming the file, array and chunk."""
    try:
        with open_stored(kind, location, array) as stored:
            try:
                return np.asarray(stored[key])
            except MemoryError:
                raise
            except Exception as error:
                raise InputError(_damage(source, location, array, error, _bad_chunk(stored, key))) from None
    except (InputError, MemoryError):
        raise
    except Exception as error:  # opening failed: a truncated or damaged file or store
        raise InputError(_damage(source, location, array, error, None)) from None


def _bad_chunk(stored: Any, key: tuple) -> tuple[int, ...] | None:
    """The grid index of the first chunk under ``key`` that cannot be read; None if none fails alone."""
    import itertools

    chunks = tuple(getattr(stored, "chunks", None) or stored.shape)
    ranges = []
    for index, (size, chunk) in enumerate(zip(stored.shape, chunks)):
        part = key[index] if index < len(key) else slice(None)
        first, last = (part, part + 1) if isinstance(part, int) else part.indices(size)[:2]
        ranges.append(range(first // chunk, max(first, last - 1) // chunk + 1))
    for cell in itertools.islice(itertools.product(*ranges), 100_000):
        try:
            np.asarray(stored[tuple(slice(c * n, (c + 1) * n) for c, n in zip(cell, chunks))])
        except Exception:
            return cell
    return None


def _damage(source: str, location: str, array: str, error: Exception, chunk: tuple[int, ...] | None) -> str:
    where = f"array {array!r} of {location}" if array else location
    at = f", chunk {chunk}" if chunk is not None else ""
    return f"{source}: cannot read {where}{at}: damaged or truncated ({type(error).__name__}: {_first(error)})"


def _first(error: Exception) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:160]


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
