"""A tiny encoder-decoder: a convolution, a 2x2 pooling, a convolution, a 2x2 up-convolution, a classifier."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dcn_ray.models.init import init_weights
from dcn_ray.models.outputs import SegmentationOutput


class ToyNet(nn.Module):
    """The toy family's network: keyword-only arguments kept in ``kwargs``, seeded, a SegmentationOutput."""

    family = "toy"

    def __init__(
        self, *, width: int = 4, toy_kernel: int = 3, in_channels: int = 1, num_classes: int = 2, seed: int = 0
    ) -> None:
        super().__init__()
        self.kwargs: dict[str, object] = {
            "width": width,
            "toy_kernel": toy_kernel,
            "in_channels": in_channels,
            "num_classes": num_classes,
        }
        pad = toy_kernel // 2
        self.encode = nn.Sequential(nn.Conv2d(in_channels, width, toy_kernel, padding=pad), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.middle = nn.Sequential(nn.Conv2d(width, 2 * width, toy_kernel, padding=pad), nn.ReLU())
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.classify = nn.Conv2d(2 * width, num_classes, 1)
        init_weights(self, seed)

    def forward(self, images: Tensor) -> SegmentationOutput:
        if images.shape[-2] % 2 or images.shape[-1] % 2:
            raise ValueError(f"ToyNet input sides must be even, got {tuple(images.shape[-2:])}")
        features = self.encode(images)
        deep = self.up(self.middle(self.pool(features)))
        return SegmentationOutput(fused=self.classify(torch.cat([features, deep], dim=1)), branches=())
