"""The U-Net (Ronneberger et al., MICCAI 2015): the field's baseline beside the DCN.

As in the paper: per level two 3x3 convolutions with ReLU, 2x2 max pooling down, 2x2
up-convolutions up that halve the channels, skip connections by concatenation, a 1x1 classifier.
Two deliberate differences, both the common modern practice (and nnU-Net's): the convolutions are
padded ("same"), so the output has the input's size and tiles blend as for the DCN; and batch
norm after each convolution (optional). The training loss and loop are the DCN's; the U-Net has
no side branches, so its output's ``branches`` is empty and the auxiliary loss term vanishes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dcn_ray.models.init import init_weights
from dcn_ray.models.outputs import SegmentationOutput, check_common_arguments, conv_block

#: The depths accepted: poolings between the first level and the bottom one.
DEPTHS = range(1, 7)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; level ``l`` has ``width * 2**l`` filters.

    Args:
        depth: number of 2x2 poolings (the paper: 4); input sides must be multiples of ``2**depth``.
        width: filters of the first level (the paper: 64).
        batch_norm: BatchNorm after every convolution.
        in_channels: image channels (1 for EM).
        num_classes: output classes (2: background, foreground).
        seed: initialisation seed, per layer as for the DCN (:mod:`dcn_ray.models.init`); not in ``kwargs``.

    ``forward`` returns a :class:`~dcn_ray.models.outputs.SegmentationOutput` with the logits in
    ``fused`` and no ``branches``. ``model.kwargs`` rebuilds the architecture: ``UNet(**model.kwargs)``.

    Example:
        >>> model = UNet(depth=2, width=4)
        >>> out = model(torch.zeros(1, 1, 16, 24))
        >>> tuple(out.fused.shape), out.branches
        ((1, 2, 16, 24), ())
        >>> UNet(depth=0)
        Traceback (most recent call last):
        ...
        ValueError: depth must be an integer from 1 to 6, got 0
    """

    family = "unet"

    def __init__(
        self,
        *,
        depth: int = 4,
        width: int = 64,
        batch_norm: bool = True,
        in_channels: int = 1,
        num_classes: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth not in DEPTHS:
            raise ValueError(f"depth must be an integer from {DEPTHS.start} to {DEPTHS.stop - 1}, got {depth!r}")
        check_common_arguments(width=width, batch_norm=batch_norm, in_channels=in_channels, num_classes=num_classes)
        self.kwargs: dict[str, object] = {
            "depth": depth,
            "width": width,
            "batch_norm": batch_norm,
            "in_channels": in_channels,
            "num_classes": num_classes,
        }
        self.multiple = 2**depth
        channels = [width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            conv_block(in_channels if level == 0 else channels[level - 1], channels[level], 2, batch_norm)
            for level in range(depth + 1)
        )
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(channels[level + 1], channels[level], 2, stride=2) for level in range(depth)
        )
        self.merge = nn.ModuleList(
            conv_block(2 * channels[level], channels[level], 2, batch_norm) for level in range(depth)
        )
        self.classify = nn.Conv2d(width, num_classes, 1)
        init_weights(self, seed)

    def forward(self, images: Tensor) -> SegmentationOutput:
        if images.ndim != 4 or images.shape[1] != self.kwargs["in_channels"]:
            raise ValueError(
                f"UNet expects (N, {self.kwargs['in_channels']}, H, W) input, got shape {tuple(images.shape)}"
            )
        if images.shape[-2] % self.multiple or images.shape[-1] % self.multiple:
            raise ValueError(
                f"UNet input height and width must be multiples of {self.multiple}, got "
                f"{images.shape[-2]}x{images.shape[-1]}; use dcn_ray.models.outputs.pad_forward for other sizes"
            )
        skips: list[Tensor] = []
        features = images
        for level, block in enumerate(self.down):
            features = block(self.pool(features) if level else features)
            skips.append(features)
        features = skips.pop()
        for level in reversed(range(len(self.up))):
            features = self.merge[level](torch.cat([skips.pop(), self.up[level](features)], dim=1))
        return SegmentationOutput(fused=self.classify(features), branches=())
