"""``dcn-ray suggest``: where to label next, ranked by how unsure the model is there.

Each slice of the stack goes through the engine's 8 TTA views (:meth:`SlicePredictor.views`); the
pixel scores of :mod:`dcn_ray.core.uncertainty` give a map, and every slice and every tile of a
square grid its mean score over the pixels not yet labelled. The outputs go into one new folder
(written whole, never over or inside an input):

- ``ranking.csv`` / ``ranking.json``: every slice and the ``top`` tiles, ranked (JSON adds the settings);
- ``uncertainty.tif``: the ranking score per pixel, float32 (Z, Y, X), the stack's shape: napari
  opens it as an image over the stack;
- ``suggested.tif``: the ``top`` tiles painted with their rank (uint16, 0 elsewhere): a labels layer.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dcn_ray import __version__, models
from dcn_ray.core import context as serial
from dcn_ray.core.uncertainty import SCORES, pixel_scores, ranked, region_rows
from dcn_ray.errors import InputError
from dcn_ray.io.guard import refuse_overlaps
from dcn_ray.io.paths import folder_written_whole, output_folder
from dcn_ray.io.tiff_writer import write_stack
from dcn_ray.io.volumes import input_slices, read_label_values, volume_shape
from dcn_ray.predict.engine import PredictOptions, SlicePredictor
from dcn_ray.track.sources import LoadedModel

FILES = ("ranking.csv", "ranking.json", "uncertainty.tif", "suggested.tif")
COLUMNS = ("kind", "rank", "z", "y0", "x0", "height", "width", *SCORES, "unlabelled")


@dataclass(frozen=True)
class SuggestOptions:
    """What to rank: ``top`` tiles of ``region`` x ``region`` pixels by ``score``; with labels, the
    pixels whose label is ``unlabelled`` (napari: 0, unpainted) are those still to label."""

    top: int = 20
    region: int = 256
    score: str = SCORES[0]
    unlabelled: int = 0

    def __post_init__(self) -> None:
        if self.top < 1:
            raise InputError(f"--top {self.top}: must be 1 or more")
        if self.region < 8:
            raise InputError(f"--region {self.region}: must be 8 pixels or more")
        if self.score not in SCORES:
            raise InputError(f"--score {self.score!r}: choose one of {', '.join(SCORES)}")


@dataclass(frozen=True)
class Suggestion:
    slices: list[dict]
    tiles: list[dict]
    folder: Path


def check_paths(
    stack: Path, out: Path, *, labels: Path | None = None, model: str | Path | None = None
) -> tuple[int, int, int]:
    """The stack's (Z, Y, X); ``labels`` of its shape; ``out`` a folder whose files touch no input."""
    shape = volume_shape(stack)
    if labels is not None and volume_shape(labels) != shape:
        raise InputError(f"--labels {labels} have shape {volume_shape(labels)} (Z, Y, X) but the stack has {shape}")
    inputs = {"the stack": stack, "the --labels file": labels, "the model file": model}
    refuse_overlaps(out, inputs)  # the folder is no input, holds none, lies inside none
    output_folder(out, FILES, inputs)
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
    shape = check_paths(stack, out, labels=labels, model=loaded.location)
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
    with folder_written_whole(out) as partial:
        _write_table(partial / FILES[0], slices + tiles)
        (partial / FILES[1]).write_text(json.dumps({"settings": settings, "slices": slices, "tiles": tiles}, indent=1))
        write_stack(partial / FILES[2], score_map, metadata={"score": options.score, **settings})
        write_stack(partial / FILES[3], painted, metadata={"what": "suggested tiles by rank", **settings})
    return Suggestion(slices, tiles, out)


def _write_table(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: f"{value:.6f}" if isinstance(value, float) else value for key, value in row.items()})
