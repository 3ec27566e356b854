"""Random training crops with dihedral augmentation, drawn from a stack already on the device.

Transform numbering (``t``), used by training and by test-time augmentation:

    0 identity, 1 rot90, 2 rot180, 3 rot270 (counter-clockwise, as ``torch.rot90``),
    4 left-right flip, 5 up-down flip, 6 transpose, 7 anti-transpose.

``range(6)`` is the paper's augmentation ("paper6"); ``range(8)`` all eight ("dihedral8").
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch
from torch import Tensor

from dcn_ray.core.partial import IGNORE

#: Names of the transforms, indexed by ``t``.
DIHEDRAL: tuple[str, ...] = (
    "identity",
    "rot90",
    "rot180",
    "rot270",
    "flip_lr",
    "flip_ud",
    "transpose",
    "antitranspose",
)
#: How many of the transforms (from t = 0) each augmentation set uses.
TRANSFORM_SETS: dict[str, int] = {"paper6": 6, "dihedral8": 8}
#: The transform that undoes ``t``.
INVERSE: tuple[int, ...] = (0, 3, 2, 1, 4, 5, 6, 7)

log = logging.getLogger(__name__)


class Crops(NamedTuple):
    """Where a batch's crops come from, each (B,) int64: slice, top row, left column, transform."""

    z: Tensor
    top: Tensor
    left: Tensor
    t: Tensor


def apply_transform(x: Tensor, t: int) -> Tensor:
    """Transform ``t`` (see the module docstring) of the last two dimensions of ``x``."""
    if t == 0:
        return x
    if t in (1, 2, 3):
        return torch.rot90(x, t, dims=(-2, -1))
    if t == 4:
        return torch.flip(x, dims=(-1,))
    if t == 5:
        return torch.flip(x, dims=(-2,))
    if t == 6:
        return x.transpose(-2, -1)
    if t == 7:
        return torch.rot90(x, 2, dims=(-2, -1)).transpose(-2, -1)
    raise ValueError(f"transform must be in range(8), got {t!r}")


def invert_transform(x: Tensor, t: int) -> Tensor:
    """Undo :func:`apply_transform` ``t``: ``invert_transform(apply_transform(x, t), t) == x``."""
    if t not in range(8):
        raise ValueError(f"transform must be in range(8), got {t!r}")
    return apply_transform(x, INVERSE[t])


class CropSampler:
    """Random square crops of an image stack and its mask, each with one random transform.

    ``images`` (Z, H, W) float and ``masks`` (Z, H, W) bool/int (nonzero = foreground) must
    already be on the training device; a sample copies at most one small index tensor there.
    ``images`` may also be (Z, C, H, W), each slice with its serial-section context as channels
    (:mod:`dcn_ray.core.context`): every channel of a crop is cut and transformed alike.

    With ``foreground_crops`` f > 0 each crop is, with probability f, centred on a foreground
    pixel drawn uniformly from those whose centred crop fits in the slice (nnU-Net's oversampling;
    when no foreground pixel is that far from the border, the crop is shifted inside the slice
    and merely contains the pixel); the others are uniform. Every draw comes from ``generator``,
    a fixed number per batch, so a run is repeatable and resumes exactly from the generator's state;
    with f = 0 the draws are those of a sampler without the option.

    Partly labelled data (``labelled``, bool like ``masks``; None: every pixel labelled, as
    without it): a target holds :data:`~dcn_ray.core.partial.IGNORE` where unlabelled, and a crop
    holding no labelled pixel is replaced by one centred on a labelled pixel (drawn as the
    foreground centres are), so no training crop is without a label.

    Example:
        >>> sampler = CropSampler(torch.rand(3, 64, 64), torch.rand(3, 64, 64) > 0.5,
        ...                       crop=32, batch_size=4)
        >>> x, y = sampler.sample()
        >>> tuple(x.shape), tuple(y.shape), y.dtype
        ((4, 1, 32, 32), (4, 32, 32), torch.int64)
    """

    def __init__(
        self,
        images: Tensor,
        masks: Tensor,
        *,
        crop: int,
        batch_size: int,
        transforms: str = "paper6",
        generator: torch.Generator | None = None,
        foreground_crops: float = 0.0,
        labelled: Tensor | None = None,
    ) -> None:
        if images.ndim not in (3, 4) or not images.is_floating_point():
            raise ValueError(f"images must be a (Z, [C,] H, W) float tensor, got {images.dtype} {tuple(images.shape)}")
        if masks.shape != images.shape[:1] + images.shape[-2:] or masks.device != images.device:
            raise ValueError(
                f"masks {tuple(masks.shape)} on {masks.device} must match images "
                f"{tuple(images.shape)} on {images.device}"
            )
        if images.shape[0] < 1:
            raise ValueError("images hold no slices")
        height, width = images.shape[-2:]
        if crop < 8 or crop % 8:
            raise ValueError(f"crop must be a positive multiple of 8, got {crop}")
        if crop > height or crop > width:
            raise ValueError(f"crop {crop} is larger than the slices ({height}x{width})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if transforms not in TRANSFORM_SETS:
            raise ValueError(f"unknown transforms {transforms!r}; choose one of {sorted(TRANSFORM_SETS)}")
        if not 0.0 <= foreground_crops <= 1.0:
            raise ValueError(f"foreground_crops must be a fraction in [0, 1], got {foreground_crops}")
        if labelled is not None and (labelled.shape != masks.shape or labelled.device != masks.device):
            raise ValueError(f"labelled {tuple(labelled.shape)} must match masks {tuple(masks.shape)} and their device")
        self.images = images
        if labelled is None:
            self.masks = (masks != 0).to(torch.uint8)
        else:  # int8: 1 foreground, 0 background, IGNORE unlabelled
            self.masks = torch.where(
                labelled.bool(), (masks != 0).to(torch.int8), torch.tensor(IGNORE, dtype=torch.int8)
            )
        self.crop = crop
        self.batch_size = batch_size
        self.transforms = transforms
        self.generator = generator
        self.foreground_crops = float(foreground_crops)
        self._centres = self._foreground_centres() if foreground_crops > 0 else None
        self._labelled = self._centres_of(self.masks >= 0, "labelled") if labelled is not None else None
        # Source (row, column) inside the crop of every output pixel, per transform:
        # transforming the index grid gives the gather indices of the transformed crop.
        grid = torch.stack(torch.meshgrid(torch.arange(crop), torch.arange(crop), indexing="ij"))
        count = TRANSFORM_SETS[transforms]
        self._sources = torch.stack([apply_transform(grid, t) for t in range(count)]).to(
            images.device
        )  # (transforms, 2, crop, crop)

    def _foreground_centres(self) -> Tensor:
        """Flat (z, y, x) indices of the foreground pixels a crop can be centred on (int64, on the device)."""
        return self._centres_of(self.masks == 1, "foreground")

    def _centres_of(self, where: Tensor, what: str) -> Tensor:
        """Flat (z, y, x) indices of the ``where`` pixels a crop can be centred on (int64, on the device)."""
        half, (height, width) = self.crop // 2, self.masks.shape[1:]
        fits = torch.zeros_like(where)
        fits[:, half : height - self.crop + half + 1, half : width - self.crop + half + 1] = True
        centres = torch.nonzero((where & fits).flatten())[:, 0]  # flat (z * H + y) * W + x, in row-major order
        if len(centres) == 0:
            log.warning("no %s pixel is %d px inside the slices: %s crops only contain one", what, half, what)
            centres = torch.nonzero(where.flatten())[:, 0]
        if len(centres) == 0:
            raise ValueError(f"{what} crops need {what} pixels in the masks")
        return centres

    def _centred(self, centre: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z, top, left) of crops centred on flat pixel indices, shifted inside the slice."""
        (height, width), half = self.masks.shape[1:], self.crop // 2
        top = (centre // width % height - half).clamp(0, height - self.crop)
        left = (centre % width - half).clamp(0, width - self.crop)
        return centre // (height * width), top, left

    def draw(self) -> Crops:
        """Where the next batch's crops come from (advances the generator)."""
        depth, height, width = self.masks.shape
        device = self.generator.device if self.generator is not None else self.images.device
        highs = (depth, height - self.crop + 1, width - self.crop + 1, len(self._sources))
        draws = [torch.randint(high, (self.batch_size,), generator=self.generator, device=device) for high in highs]
        if self._centres is not None:
            chosen = torch.rand(self.batch_size, generator=self.generator, device=device) < self.foreground_crops
            pick = torch.randint(len(self._centres), (self.batch_size,), generator=self.generator, device=device)
            draws += [chosen.long(), pick]
        if self._labelled is not None:
            draws.append(
                torch.randint(len(self._labelled), (self.batch_size,), generator=self.generator, device=device)
            )
        draws = torch.stack(draws).to(self.images.device, non_blocking=True)
        z, top, left, t = draws[:4]
        if self._centres is not None:
            chosen = draws[4].bool()
            z, top, left = (
                torch.where(chosen, a, b) for a, b in zip(self._centred(self._centres[draws[5]]), (z, top, left))
            )
        if self._labelled is not None:  # a crop without a labelled pixel gives way to one centred on one
            grid = self._sources[0]
            known = self.masks[z[:, None, None], top[:, None, None] + grid[0], left[:, None, None] + grid[1]] >= 0
            empty = ~known.flatten(1).any(1)
            z, top, left = (
                torch.where(empty, a, b) for a, b in zip(self._centred(self._labelled[draws[-1]]), (z, top, left))
            )
        return Crops(z, top, left, t)

    def cut(self, crops: Crops) -> tuple[Tensor, Tensor]:
        """The batch of ``crops``: x (B, C, crop, crop) float (C = 1 for (Z, H, W) images) and y
        (B, crop, crop) int64 in {0, 1} (and IGNORE where unlabelled)."""
        source = self._sources[crops.t]  # (B, 2, crop, crop)
        rows = crops.top[:, None, None] + source[:, 0]
        cols = crops.left[:, None, None] + source[:, 1]
        slices = crops.z[:, None, None]
        if self.images.ndim == 3:
            x = self.images[slices, rows, cols].unsqueeze(1)
        else:  # (B, crop, crop, C) -> (B, C, crop, crop): every channel through the same transform
            x = self.images[slices, :, rows, cols].permute(0, 3, 1, 2)
        y = self.masks[slices, rows, cols].long()
        return x, y

    def sample(self) -> tuple[Tensor, Tensor]:
        """A batch: x (B, 1, crop, crop) float and y (B, crop, crop) int64 in {0, 1}."""
        return self.cut(self.draw())
