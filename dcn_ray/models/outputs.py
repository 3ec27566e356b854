"""What every model family shares: the check of its common arguments, its convolution blocks,
what its forward returns, and a forward for inputs of any size."""

from __future__ import annotations

from typing import NamedTuple

import torch.nn.functional as F
from torch import Tensor, nn


def check_common_arguments(*, width: object, batch_norm: object, in_channels: object, num_classes: object) -> None:
    """ValueError naming the argument when width, in_channels or num_classes is not a large enough
    integer (1, 1, 2) or batch_norm is not a bool: the arguments every family takes."""
    for name, value, least in (("width", width, 1), ("in_channels", in_channels, 1), ("num_classes", num_classes, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    if not isinstance(batch_norm, bool):
        raise ValueError(f"batch_norm must be True or False, got {batch_norm!r}")


def conv_block(in_channels: int, out_channels: int, convs: int, batch_norm: bool) -> nn.Sequential:
    """``convs`` times: 3x3 conv (padding 1) [+ BatchNorm] + ReLU (the DCN's and the U-Net's levels)."""
    layers: list[nn.Module] = []
    for index in range(convs):
        source = in_channels if index == 0 else out_channels
        layers.append(nn.Conv2d(source, out_channels, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SegmentationOutput(NamedTuple):
    """A segmentation network's output: logits, each (N, num_classes, H, W) at the input size.

    Example:
        >>> import torch
        >>> out = SegmentationOutput(fused=torch.zeros(1, 2, 8, 8), branches=())
        >>> out.fused.shape[1], len(out.branches)
        (2, 0)
    """

    fused: Tensor
    """The model's logits; softmax of them gives the segmentation (the DCN: the sum of F1-F3)."""
    branches: tuple[Tensor, ...]
    """Auxiliary logits the loss adds with the ``aux`` weight: F1, F2, F3 for the DCN; () for a U-Net."""


def pad_forward(model: nn.Module, images: Tensor, multiple: int) -> SegmentationOutput:
    """Run ``model`` on (N, C, H, W) ``images`` of any size; outputs are cropped back to H x W.

    The bottom and right are padded by reflection up to multiples of ``multiple`` (by edge
    replication where an image is too small to reflect), as the predictor pads slices.
    """
    if images.ndim != 4:
        raise ValueError(f"pad_forward expects (N, C, H, W) input, got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return model(images)
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    out = model(F.pad(images, (0, pad_w, 0, pad_h), mode=mode))
    branches = tuple(branch[..., :height, :width] for branch in out.branches)
    return SegmentationOutput(fused=out.fused[..., :height, :width], branches=branches)
