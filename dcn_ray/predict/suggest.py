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
import json
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
from dcn_ray.io.tiff_writer import write_stack
from dcn_ray.io.volumes import input_slices, is_zarr_path, open_volume, read_label_values, volume_shape
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
    """Rank where to label next on ``stack`` (see the module docstring); write the folder ``out``."""
    stack, out = Path(stack), Path(out)
    shape = check_paths(stack, out, labels=labels, model=loaded.location, format=options.format)
    unlabelled = None if labels is None else read_label_values(labels) == options.unlabelled
    predictor = SlicePredictor(loaded.model, PredictOptions(tta=True, device=device))
    score_map = np.zeros(shape, dtype=np.float32)
    rows: list[dict] = []
    context = models.context_of(loaded.model)  # a model of context N reads each slice with its neighbours
    slices = serial.windows(input_slices(stack), context, shape[0]) if context else input_slices(stack)
    for z, image in enumerate(slices):
        maps = pixel_scores(predictor.views(image))
        score_map[z] = maps[options.score]
        rows += region_rows(z, maps, None if unlabelled is None else unlabelled[z], options.region)
    slices = ranked((r for r in rows if r["kind"] == "slice"), options.score)
    tiles = ranked((r for r in rows if r["kind"] == "tile"), options.score)[: options.top]
    painted = np.zeros(shape, dtype=np.uint16)
    for tile in tiles:
        painted[tile["z"], tile["y0"] : tile["y0"] + tile["height"], tile["x0"] : tile["x0"] + tile["width"]] = tile[
            "rank"
        ]
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
        _write_table(partial / files[0], slices + tiles)
        (partial / files[1]).write_text(json.dumps({"settings": settings, "slices": slices, "tiles": tiles}, indent=1))
        if options.format == "ome-zarr":
            _write_omezarr(partial / files[2], stack, score_map, painted, settings)
        else:
            write_stack(partial / files[2], score_map, metadata={"score": options.score, **settings})
            write_stack(partial / files[3], painted, metadata={"what": "suggested tiles by rank", **settings})
    return Suggestion(slices, tiles, out)


def _write_omezarr(path: Path, stack: Path, score_map: np.ndarray, painted: np.ndarray, settings: dict) -> None:
    """The map as an OME-Zarr image (the stack's axes and scale), the ranked tiles as its label image."""
    volume = open_volume(stack, scan=False)
    chunks = (1, min(score_map.shape[1], 512), min(score_map.shape[2], 512))
    store = omezarr.create_store(
        path, shape=score_map.shape, chunks=chunks, dtype="float32", grid=(1, 1, 1), axes=volume.axes,
        scale=volume.scale, ngff="0.4", label=True, settings={"what": "suggest", **settings},
        label_name="suggested", label_dtype="uint16",
    )  # fmt: skip
    everything = (slice(None),) * 3
    store.write(everything, score_map, painted)
    omezarr.finish_store(store, path)


def _write_table(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value for key, value in row.items()})
