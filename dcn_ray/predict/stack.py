"""Segment new stacks with a trained model of any family: tiled, test-time-augmented, streamed.

Tiling. A model is translation-equivariant for shifts by its family's size multiple (8 for the
DCN's three 2x2 poolings, ``2**depth`` for a U-Net), and an output pixel depends only on the input
within its family's receptive radius (:func:`dcn_ray.models.receptive_radius`; 54 for DCN kernels
4-8-16). A slice is padded to that multiple as :func:`~dcn_ray.models.outputs.pad_forward`
pads it, then cut into tiles whose starts are multiples of it and which share ``overlap``
pixels with their neighbours. Each tile's foreground probability is weighted by a window that
is zero within ``margin = min(radius, overlap // 2)`` pixels of the tile's inner borders (those
not on the slice's edge) and rises as a raised cosine to one across the rest of the overlap.
With ``overlap >= 2 * radius`` every weighted pixel sees all of its receptive field, so the
blend equals the whole-slice output up to float rounding; with less, seams differ slightly
(a warning says so). The default overlap, 128, is enough for every DCN with k3 <= 32 (with
k1, k2 <= 84); a U-Net of depth 4 (radius 122) needs 248. The model's logits are its output's
``fused`` field, whatever its family (:class:`~dcn_ray.models.outputs.SegmentationOutput`).

TTA. The whole slice (not each tile) goes through each of the 8 dihedral transforms, is
predicted, transformed back, and the probabilities are averaged: the result is exactly
equivariant to flips and rotations of the input, whatever the tiling.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcn_ray import __version__, models
from dcn_ray.core.dcn import MULTIPLE
from dcn_ray.core.device import select_device
from dcn_ray.core.evaluation import score_probabilities
from dcn_ray.core.sampler import apply_transform, invert_transform
from dcn_ray.errors import InputError
from dcn_ray.io.paths import output_file
from dcn_ray.io.predictions import read_prediction
from dcn_ray.io.tiff_writer import StackWriter
from dcn_ray.io.volumes import input_slices, read_label_volume, volume_shape
from dcn_ray.models import dcn_receptive_radius as receptive_radius  # noqa: F401 (the DCN radius, re-exported)
from dcn_ray.track.sources import LoadedModel

log = logging.getLogger(__name__)

OUTPUTS = ("probabilities", "mask", "float")
_BIGTIFF_ABOVE = 3 * 2**30  # output bytes above which the TIFF is written as BigTIFF

#: Maps slices (Y, X) float32 in [0, 1] to (foreground probability, name of who predicted it).
SliceMapper = Callable[[Iterable[np.ndarray]], Iterator[tuple[np.ndarray, str]]]
#: Called with (slices done, slices in all): 0 once before the first slice, then after each.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PredictOptions:
    """How to predict: tiling, test-time augmentation, what to write, where to compute."""

    tile: int = 2048  # whole slices up to 2048 x 2048 in one forward (bench/predict_volume.py)
    overlap: int = 128
    tta: bool = True
    output: str = "probabilities"  # uint8 0-255; "float": float32 0-1; "mask": uint8 0/255
    threshold: float = 0.5  # foreground where the probability exceeds it (mask and --labels)
    device: str | None = None  # "cpu", "cuda", or None: a GPU when one is visible

    def __post_init__(self) -> None:
        if self.tile < MULTIPLE or self.tile % MULTIPLE:
            raise InputError(f"--tile {self.tile}: must be a positive multiple of {MULTIPLE}")
        if self.overlap < 0 or self.overlap % MULTIPLE:
            raise InputError(f"--overlap {self.overlap}: must be a multiple of {MULTIPLE} (0 or more)")
        if self.tile <= 2 * self.overlap:
            raise InputError(f"--tile {self.tile} must be larger than twice --overlap {self.overlap}")
        if self.output not in OUTPUTS:
            raise InputError(f"--output {self.output!r}: choose one of {', '.join(OUTPUTS)}")
        if not 0.0 < self.threshold < 1.0:
            raise InputError(f"--threshold {self.threshold}: must lie strictly between 0 and 1")
        if self.device not in (None, "cpu", "cuda"):
            raise InputError(f"--device {self.device!r}: choose cpu or cuda")


@dataclass(frozen=True)
class PredictResult:
    output: Path
    slices: int
    seconds: float  # from the first slice read to the last one written
    #: Who predicted each slice ("local", or a Ray worker's name).
    workers: tuple[str, ...]
    #: Scores against --labels as ``dcn-ray score`` gives them (core.evaluation.score_probabilities); None without.
    scores: dict[str, float] | None


# ----------------------------------------------------------------------------- one slice


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of ``tile`` pixels covering ``length``; neighbours share >= ``overlap``."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def edge_weights(size: int, *, inner_before: bool, inner_after: bool, overlap: int, margin: int) -> np.ndarray:
    """A tile's 1-D window: zero within ``margin`` of an inner border, one beyond ``overlap - margin``."""
    distance = np.arange(size, dtype=np.float64)
    ramp = overlap - 2 * margin

    def rise(d: np.ndarray) -> np.ndarray:
        if ramp <= 0:
            return (d >= margin).astype(np.float64)
        return 0.5 - 0.5 * np.cos(np.pi * np.clip((d - margin + 0.5) / ramp, 0.0, 1.0))

    weights = np.ones(size)
    if inner_before:
        weights *= rise(distance)
    if inner_after:
        weights *= rise(distance[::-1])
    return weights.astype(np.float32)


class SlicePredictor:
    """The foreground probability of single slices, by one model on one device."""

    def __init__(self, model: nn.Module, options: PredictOptions) -> None:
        self.options = options
        self.multiple = models.size_multiple(model)
        for name, value in (("--tile", options.tile), ("--overlap", options.overlap)):
            if value % self.multiple:
                raise InputError(f"{name} {value}: must be a multiple of {self.multiple} for {models.describe(model)}")
        self.device = select_device(options.device)
        self.model = model.to(self.device).eval()
        radius = models.receptive_radius(model)
        self.margin = min(radius, options.overlap // 2)
        if self.margin < radius:
            log.warning(
                "--overlap %d is below %d, twice the receptive radius of %s: tile seams "
                "may differ slightly from whole-slice predictions",
                options.overlap,
                2 * radius,
                models.describe(model),
            )

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(Y, X) float32 in [0, 1] -> (Y, X) float32 foreground probability."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        transforms = range(8) if self.options.tta else range(1)
        total = torch.zeros_like(x)
        with torch.inference_mode():
            for t in transforms:
                total += invert_transform(self._tiled(apply_transform(x, t)), t)
        return (total / len(transforms)).cpu().numpy()

    def _tiled(self, image: Tensor) -> Tensor:
        height, width = image.shape
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"  # as pad_forward
        padded = F.pad(image[None, None], (0, pad_w, 0, pad_h), mode=mode)[0, 0] if pad_h or pad_w else image
        rows, cols = padded.shape
        tile_h, tile_w = min(self.options.tile, rows), min(self.options.tile, cols)
        if (tile_h, tile_w) == (rows, cols):
            return self._probability(padded)[:height, :width]
        total = torch.zeros_like(padded)
        weight = torch.zeros_like(padded)
        for top in tile_starts(rows, tile_h, self.options.overlap):
            across = self._weights(tile_h, top, rows)
            for left in tile_starts(cols, tile_w, self.options.overlap):
                window = across[:, None] * self._weights(tile_w, left, cols)[None, :]
                tile = padded[top : top + tile_h, left : left + tile_w]
                total[top : top + tile_h, left : left + tile_w] += window * self._probability(tile)
                weight[top : top + tile_h, left : left + tile_w] += window
        return (total / weight)[:height, :width]

    def _weights(self, size: int, start: int, length: int) -> Tensor:
        weights = edge_weights(
            size,
            inner_before=start > 0,
            inner_after=start + size < length,
            overlap=self.options.overlap,
            margin=self.margin,
        )
        return torch.from_numpy(weights).to(self.device)

    def _probability(self, tile: Tensor) -> Tensor:
        return torch.softmax(self.model(tile[None, None]).fused, dim=1)[0, 1]


def encode(probability: np.ndarray, output: str, threshold: float) -> np.ndarray:
    """The page written for one slice: uint8 0-255, float32 0-1, or a bool mask (stored 0/255)."""
    if output == "float":
        return probability.astype(np.float32, copy=False)
    if output == "mask":
        return probability > threshold
    return np.rint(probability * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- a stack


@contextmanager
def local_mapper(model: nn.Module, options: PredictOptions) -> Iterator[SliceMapper]:
    """Predict in this process, one slice after the other."""
    predict = SlicePredictor(model, options)
    yield lambda slices: ((predict(image), "local") for image in slices)


def check_paths(
    input_path: Path,
    output_path: Path,
    *,
    labels: Path | None = None,
    model: str | Path | None = None,
    level: int = 0,
) -> tuple[int, int, int]:
    """The files of a prediction, checked before any work: the input stack and ``labels`` (same
    shape), and an output file that can be written and is none of the inputs (``model`` included).

    Returns the input's (Z, Y, X).
    """
    shape = volume_shape(input_path, level)
    if labels is not None and volume_shape(labels, level) != shape:
        raise InputError(
            f"--labels {labels} have shape {volume_shape(labels, level)} (Z, Y, X) but the input has {shape}"
        )
    inputs = {"the input stack": input_path, "the --labels file": labels, "the model file": model}
    output_file(output_path, inputs)
    return shape


def predict_stack(
    loaded: LoadedModel,
    input_path: Path,
    output_path: Path,
    options: PredictOptions,
    *,
    labels: Path | None = None,
    workers: int | None = None,
    address: str | None = None,
    progress: Progress | None = None,
    level: int = 0,
) -> PredictResult:
    """Segment the stack (or 2-D image) ``input_path`` into ``output_path``, streamed.

    One slice at a time is read, predicted and written (to a temporary name, renamed at the
    end). ``workers`` or ``address`` spread the slices over Ray actors, one GPU each where the
    cluster has GPUs. With ``labels`` the written output is read back and scored exactly as
    ``dcn-ray score OUTPUT LABELS`` scores it (a probability map: pixel scores at
    ``options.threshold``, V_rand and V_info at their best threshold; a mask: as it is). The
    foreground label value comes from the model's config.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    shape = check_paths(input_path, output_path, labels=labels, model=loaded.location, level=level)
    truth = _truth(labels, shape, loaded, level) if labels is not None else None
    page_bytes = 4 if options.output == "float" else 1
    bigtiff = math.prod(shape) * page_bytes > _BIGTIFF_ABOVE
    names: list[str] = []
    with (
        _mapper(loaded, options, workers, address) as mapper,
        StackWriter(output_path, metadata=_metadata(loaded, options), bigtiff=bigtiff) as writer,
    ):
        started = time.perf_counter()
        if progress is not None:
            progress(0, shape[0])
        for index, (probability, name) in enumerate(mapper(input_slices(input_path, level))):
            writer.write(encode(probability, options.output, options.threshold))
            names.append(name)
            if progress is not None:
                progress(index + 1, shape[0])
        seconds = time.perf_counter() - started
    scores = None
    if truth is not None:  # what `dcn-ray score` reads: the output as written
        scores = score_probabilities(read_prediction(output_path)[0], truth, threshold=options.threshold)
    return PredictResult(output_path, len(names), seconds, tuple(names), scores)


def _mapper(
    loaded: LoadedModel, options: PredictOptions, workers: int | None, address: str | None
) -> AbstractContextManager[SliceMapper]:
    if workers is None and address is None:
        return local_mapper(loaded.model, options)
    from dcn_ray.predict.workers import ray_mapper

    return ray_mapper(loaded.payload, options, workers=workers, address=address)


def _truth(labels: Path, shape: tuple[int, int, int], loaded: LoadedModel, level: int = 0) -> np.ndarray:
    label_shape = volume_shape(labels, level)
    if label_shape != shape:
        raise InputError(f"--labels {labels} have shape {label_shape} (Z, Y, X) but the input has {shape}")
    foreground = loaded.payload.get("config", {}).get("data", {}).get("foreground", 255)
    return read_label_volume(labels, foreground, level)


def _metadata(loaded: LoadedModel, options: PredictOptions) -> dict:
    return {
        "model": loaded.source,
        "model_location": loaded.location,
        "model_family": models.family_of(loaded.model).name,
        "kernels": list(loaded.model.kernels) if models.family_of(loaded.model).uses_kernels else None,
        "model_step": loaded.payload.get("step"),
        "dcn_ray_version": __version__,
        "output": options.output,
        "threshold": options.threshold if options.output == "mask" else None,
        "tta": options.tta,
        "tile": options.tile,
        "overlap": options.overlap,
    }
