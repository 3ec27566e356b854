"""The prediction engine: slices and blocks by one model of any family on one device.

Model-agnostic: what it needs of a model comes from its family (:mod:`dcn_ray.models`): the size
multiple, the receptive radius and the logits in the output's ``fused`` field. The drivers
(:mod:`~dcn_ray.predict.stack`, :mod:`~dcn_ray.predict.volume`) and the Ray pool
(:mod:`~dcn_ray.predict.ray_pool`) import it; it imports none of them.

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
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcn_ray import models
from dcn_ray.core import context as serial
from dcn_ray.core.device import select_device
from dcn_ray.core.sampler import apply_transform, invert_transform
from dcn_ray.errors import InputError
from dcn_ray.io.fingerprint import region_digest
from dcn_ray.io.omezarr import OutputStore
from dcn_ray.io.volumes import Volume
from dcn_ray.predict import blocks as blocking
from dcn_ray.predict.blocks import MULTIPLE, Block

log = logging.getLogger(__name__)

OUTPUTS = ("probabilities", "mask", "float")


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


# ----------------------------------------------------------------------------- a slice


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


#: More Ray workers than any cluster holds: refused before Ray is started.
MAX_WORKERS = 4096


def check_tiling(model: nn.Module, options: PredictOptions) -> int:
    """The model's size multiple; InputError unless --tile and --overlap are multiples of it."""
    multiple = models.size_multiple(model)
    for name, value in (("--tile", options.tile), ("--overlap", options.overlap)):
        if value % multiple:
            raise InputError(f"{name} {value}: must be a multiple of {multiple} for {models.describe(model)}")
    return multiple


def check_run(model: nn.Module, options: PredictOptions, *, workers: int | None, address: str | None) -> None:
    """What needs no work, checked before the first line is printed: the tiling fits the model, the
    device exists here, and the workers fit a local Ray (a cluster's are counted once joined)."""
    check_tiling(model, options)
    if workers is not None and workers > MAX_WORKERS:
        raise InputError(f"--workers {workers}: at most {MAX_WORKERS}")
    if address or os.environ.get("RAY_ADDRESS"):
        return
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return  # a Ray already running in this process: its own resources decide, once joined
    select_device(options.device)  # --device cuda where no GPU is visible
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers is not None and workers > cpus:
        raise InputError(f"--workers {workers}: this machine has {cpus} CPU(s) for a local Ray; give at most {cpus}")


class SlicePredictor:
    """The foreground probability of single slices, by one model on one device."""

    def __init__(self, model: nn.Module, options: PredictOptions) -> None:
        self.options = options
        self.multiple = check_tiling(model, options)
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
        """(Y, X) float32 in [0, 1] -> (Y, X) float32 foreground probability.

        A model of context N takes the slice's input, (2N + 1, Y, X) (:mod:`dcn_ray.core.context`):
        every channel is tiled and transformed alike."""
        x = self._channels(image)
        total, count = torch.zeros_like(x[0]), 0
        with torch.inference_mode():
            for view in self._views(x):
                total += view
                count += 1
        return (total / count).cpu().numpy()

    def views(self, image: np.ndarray) -> np.ndarray:
        """(Y, X) -> (T, Y, X) float32: the foreground probability of each TTA view, transformed back
        (T = 8 with TTA, else 1); their mean is :meth:`__call__`'s (``dcn-ray suggest`` reads their spread).
        A model of context N takes the (2N + 1, Y, X) input, as :meth:`__call__` does."""
        x = self._channels(image)
        with torch.inference_mode():
            return torch.stack(list(self._views(x))).cpu().numpy()

    def _channels(self, image: np.ndarray) -> Tensor:
        """(Y, X) or (C, Y, X) -> (C, Y, X) on the device."""
        x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(self.device)
        return x[None] if x.ndim == 2 else x

    def _views(self, x: Tensor) -> Iterator[Tensor]:
        for t in range(8) if self.options.tta else range(1):
            yield invert_transform(self._tiled(apply_transform(x, t)), t)

    def _tiled(self, image: Tensor) -> Tensor:
        """(C, Y, X) -> (Y, X) probability."""
        height, width = image.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"  # as pad_forward
        padded = F.pad(image[None], (0, pad_w, 0, pad_h), mode=mode)[0] if pad_h or pad_w else image
        rows, cols = padded.shape[-2:]
        tile_h, tile_w = min(self.options.tile, rows), min(self.options.tile, cols)
        if (tile_h, tile_w) == (rows, cols):
            return self._probability(padded)[:height, :width]
        total = torch.zeros_like(padded[0])
        weight = torch.zeros_like(padded[0])
        for top in tile_starts(rows, tile_h, self.options.overlap):
            across = self._weights(tile_h, top, rows)
            for left in tile_starts(cols, tile_w, self.options.overlap):
                window = across[:, None] * self._weights(tile_w, left, cols)[None, :]
                tile = padded[:, top : top + tile_h, left : left + tile_w]
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
        return torch.softmax(self.model(tile[None]).fused, dim=1)[0, 1]


def encode(probability: np.ndarray, output: str, threshold: float) -> np.ndarray:
    """The page written for one slice: uint8 0-255, float32 0-1, or a bool mask (stored 0/255)."""
    if output == "float":
        return probability.astype(np.float32, copy=False)
    if output == "mask":
        return probability > threshold
    return np.rint(probability * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- a block


@dataclass(frozen=True)
class VolumePlan:
    """What a prediction writes where: the input, the block grid and the output's settings."""

    volume: Volume
    chunks: tuple[int, int, int]
    block: tuple[int, int, int]
    halo: int
    options: PredictOptions
    #: The pixel grid regions lie on (:func:`~dcn_ray.predict.blocks.grid_for` the model).
    align: int = blocking.MULTIPLE
    #: The model's serial-section context N: each block reads N slices more on each side in z.
    context: int = 0
    #: The input's slices written (first, stop), the output's z 0 at ``first``; None: all of them.
    span: tuple[int, int] | None = None

    def blocks(self, skip: Iterable[tuple[int, int, int]] = ()) -> Iterator[Block]:
        skipped = set(skip)
        blocks = blocking.iter_blocks(self.volume.shape, self.block, self.halo, self.align, self.context, self.span)
        for block in blocks:
            if block.index not in skipped:
                yield block

    @property
    def shape(self) -> tuple[int, int, int]:
        """The output's (Z, Y, X): the volume's, or the slices of ``span``."""
        if self.span is None:
            return self.volume.shape
        return (self.span[1] - self.span[0], *self.volume.shape[1:])

    @property
    def grid(self) -> tuple[int, int, int]:
        return blocking.grid(self.shape, self.block)

    def written(self, block: Block) -> tuple[slice, slice, slice]:
        """Where ``block``'s core goes in the output (its z counted from the span's first slice)."""
        z, y, x = block.core
        first = self.span[0] if self.span is not None else 0
        return slice(z.start - first, z.stop - first), y, x

    @property
    def dtype(self) -> str:
        return "float32" if self.options.output == "float" else "uint8"


class BlockPredictor:
    """Predict blocks with one model on one device and write each into the store."""

    def __init__(self, model: nn.Module, plan: VolumePlan, store: OutputStore) -> None:
        self.predict = SlicePredictor(model, plan.options)
        self.device = self.predict.device
        self.plan, self.store = plan, store

    def __call__(self, block: Block) -> int:
        """Read, predict, write and record ``block``; its voxel count."""
        options, context = self.plan.options, self.plan.context
        region = self.plan.volume.read(*block.region)
        rows, cols = block.inner
        if context:  # each core slice with its neighbours, read as the whole stack reads them
            core = block.core[0]
            first = block.region[0].start
            inputs = serial.block_inputs(region, first, core.start, core.stop, context, self.plan.volume.shape[0])
        else:
            inputs = region
        probability = np.stack([self.predict(image)[rows, cols] for image in inputs])
        values = encode(probability, options.output, options.threshold)
        if values.dtype == np.bool_:
            values = values.astype(np.uint8) * np.uint8(255)  # a mask is stored 0/255, as in TIFF
        self.store.write(self.plan.written(block), values, probability > options.threshold)
        self.store.mark_done(block.index, region_digest(region))
        return block.voxels
