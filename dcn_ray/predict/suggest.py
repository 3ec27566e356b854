"""``dcn-ray suggest``: where to label next, ranked by how unsure the model is there.

Each slice of the stack goes through the engine's 8 TTA views (:meth:`SlicePredictor.views`); the
pixel scores of :mod:`dcn_ray.core.uncertainty` give a map, and every slice and every tile of a
square grid its mean score over the pixels not yet labelled. The outputs go into one new folder
(written whole, never over or inside an input):

- ``ranking.csv`` / ``ranking.json``: every slice and the ``top`` tiles, ranked (JSON adds the settings);
- ``uncertainty.tif``: the ranking score per pixel, float32 (Z, Y, X), the stack's shape: napari
  opens it as an image over the stack;
- ``suggested.tif``: the ``top`` tiles painted with their rank (uint16, 0 elsewhere): a labels layer;
- or, with the ``ome-zarr`` format, both in one OME-Zarr image ``uncertainty.ome.zarr`` (NGFF 0.4,
  the stack's axes and scale), written by predict's writer (:mod:`dcn_ray.io.omezarr`): the map as
  the image, the tiles as its label image ``labels/suggested`` (napari-ome-zarr opens both).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dcn_ray import __version__, models
from dcn_ray.core import context as serial
from dcn_ray.core.uncertainty import SCORES, pixel_scores, ranked, region_rows
from dcn_ray.errors import InputError
from dcn_ray.io import omezarr
from dcn_ray.io.guard import refuse_overlaps
from dcn_ray.io.paths import folder_written_whole, output_folder
from dcn_ray.io.tiff_writer import StackWriter, needs_bigtiff
from dcn_ray.io.volumes import input_slices, is_zarr_path, label_value_slices, open_volume, volume_shape
from dcn_ray.predict.engine import PredictOptions, SlicePredictor
from dcn_ray.track.sources import LoadedModel

#: The files written into the folder, by the format of the map.
FILES = {
    "tiff": ("ranking.csv", "ranking.json", "uncertainty.tif", "suggested.tif"),
    "ome-zarr": ("ranking.csv", "ranking.json", "uncertainty.ome.zarr"),
}
COLUMNS = ("kind", "rank", "z", "y0", "x0", "height", "width", *SCORES, "unlabelled")


@dataclass(frozen=True)
class SuggestOptions:
    """What to rank: ``top`` tiles of ``region`` x ``region`` pixels by ``score``; with labels, the
    pixels whose label is ``unlabelled`` (napari: 0, unpainted) are those still to label."""

    top: int = 20
    region: int = 256
    score: str = SCORES[0]
    unlabelled: int = 0
    #: How the map and the tiles are written: ``tiff`` (two stacks) or ``ome-zarr`` (one image).
    format: str = "tiff"

    def __post_init__(self) -> None:
        if self.top < 1:
            raise InputError(f"--top {self.top}: must be 1 or more")
        if self.region < 8:
            raise InputError(f"--region {self.region}: must be 8 pixels or more")
        if self.score not in SCORES:
            raise InputError(f"--score {self.score!r}: choose one of {', '.join(SCORES)}")
        if self.format not in FILES:
            raise InputError(f"--format {self.format!r}: choose one of {', '.join(FILES)}")


@dataclass(frozen=True)
class Suggestion:
    slices: list[dict]
    tiles: list[dict]
    folder: Path


def check_paths(
    stack: Path,
    out: Path,
    *,
    labels: Path | None = None,
    model: str | Path | None = None,
    format: str = "tiff",
) -> tuple[int, int, int]:
    """The stack's (Z, Y, X); ``labels`` of its shape; ``out`` a folder whose files touch no input
    (an OME-Zarr map there: new, or a store dcn-ray wrote, which is replaced)."""
    shape = volume_shape(stack)
    if labels is not None and volume_shape(labels) != shape:
        raise InputError(f"--labels {labels} have shape {volume_shape(labels)} (Z, Y, X) but the stack has {shape}")
    inputs = {"the stack": stack, "the --labels file": labels, "the model file": model}
    refuse_overlaps(out, inputs)  # the folder is no input, holds none, lies inside none
    output_folder(out, [name for name in FILES[format] if not is_zarr_path(name)], inputs)
    for name in FILES[format]:
        if is_zarr_path(name) and os.path.lexists(out / name):
            refuse_overlaps(out / name, inputs)
            omezarr.check_output(out / name)
    return shape


def suggest(
    loaded: LoadedModel,
    stack: Path,
    out: Path,
    options: SuggestOptions,
    *,
    labels: Path | None = None,
    device: str | None = None,
) -> Suggestion:
    """Rank where to label next on ``stack`` (see the module docstring); write the folder ``out``.

    One slice at a time: the map is written as each slice is scored and the tiles once ranked, so
    memory holds a slice and the ranking's rows, never the stack, the map or the labels whole."""
    stack, out = Path(stack), Path(out)
    shape = check_paths(stack, out, labels=labels, model=loaded.location, format=options.format)
    predictor = SlicePredictor(loaded.model, PredictOptions(tta=True, device=device))
    context = models.context_of(loaded.model)  # a model of context N reads each slice with its neighbours
    images = serial.windows(input_slices(stack), context, shape[0]) if context else input_slices(stack)
    label_values = label_value_slices(labels) if labels is not None else itertools.repeat(None)
    settings = {
        "model": loaded.source,
        "model_location": loaded.location,
        "stack": str(stack),
        "labels": None if labels is None else str(labels),
        **asdict(options),
        "dcn_ray_version": __version__,
    }
    files = FILES[options.format]
    with folder_written_whole(out) as partial:
        maps = _MapWriter(partial / files[2], stack, shape, options, settings)
        rows: list[dict] = []
        with maps:
            for z, (image, values) in enumerate(zip(images, label_values)):
                scores = pixel_scores(predictor.views(image))
                maps.write_scores(z, scores[options.score])
                unlabelled = None if values is None else values == options.unlabelled
                rows += region_rows(z, scores, unlabelled, options.region)
            slices = ranked((r for r in rows if r["kind"] == "slice"), options.score)
            tiles = ranked((r for r in rows if r["kind"] == "tile"), options.score)[: options.top]
            maps.write_tiles(tiles, partial / files[3] if options.format == "tiff" else None)
        _write_table(partial / files[0], slices + tiles)
        (partial / files[1]).write_text(json.dumps({"settings": settings, "slices": slices, "tiles": tiles}, indent=1))
    return Suggestion(slices, tiles, out)


class _MapWriter:
    """The uncertainty map, slice by slice, then the ranked tiles: two TIFF stacks, or one OME-Zarr image
    (the stack's axes and scale) with the tiles as its label image ``labels/suggested``."""

    def __init__(self, path: Path, stack: Path, shape: tuple[int, int, int], options: SuggestOptions, settings: dict):
        self.path, self.shape, self.settings = path, shape, settings
        if options.format == "ome-zarr":
            volume = open_volume(stack, scan=False)
            self.store: omezarr.OutputStore | None = omezarr.create_store(
                path, shape=shape, chunks=(1, min(shape[1], 512), min(shape[2], 512)), dtype="float32",
                grid=(1, 1, 1), axes=volume.axes, scale=volume.scale, ngff="0.4", label=True,
                settings={"what": "suggest", **settings}, label_name="suggested", label_dtype="uint16",
            )  # fmt: skip
            self.pages: StackWriter | None = None
        else:
            self.store = None
            metadata = {"score": options.score, **settings}
            self.pages = StackWriter(path, metadata=metadata, bigtiff=needs_bigtiff(math.prod(shape) * 4))

    def __enter__(self) -> _MapWriter:
        if self.pages is not None:
            self.pages.__enter__()
        return self

    def __exit__(self, *failure) -> None:
        if self.pages is not None:
            self.pages.__exit__(*failure)

    def write_scores(self, z: int, scores: np.ndarray) -> None:
        if self.store is not None:
            self.store.write((slice(z, z + 1), slice(None), slice(None)), scores[np.newaxis].astype(np.float32))
        else:
            self.pages.write(scores.astype(np.float32))

    def write_tiles(self, tiles: list[dict], pages: Path | None) -> None:
        """Each tile painted with its rank: into the store's label image, or as the stack ``pages``."""
        if self.store is not None:
            for tile in tiles:
                rows, cols = _region(tile)
                self.store.write_label(
                    (slice(tile["z"], tile["z"] + 1), rows, cols),
                    np.full((1, rows.stop - rows.start, cols.stop - cols.start), tile["rank"], np.uint16),
                )
            omezarr.finish_store(self.store, self.path)
            return
        metadata = {"what": "suggested tiles by rank", **self.settings}
        with StackWriter(pages, metadata=metadata, bigtiff=needs_bigtiff(math.prod(self.shape) * 2)) as writer:
            for z in range(self.shape[0]):
                painted = np.zeros(self.shape[1:], dtype=np.uint16)
                for tile in (t for t in tiles if t["z"] == z):
                    painted[_region(tile)] = tile["rank"]
                writer.write(painted)


def _region(tile: dict) -> tuple[slice, slice]:
    return slice(tile["y0"], tile["y0"] + tile["height"]), slice(tile["x0"], tile["x0"] + tile["width"])


def _write_table(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value for key, value in row.items()})
