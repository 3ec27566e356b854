"""The Deep Contextual Network (DCN; Chen et al., AAAI 2016) with configurable deconv kernels."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcn_ray.kernels import BRANCHES, REFERENCE, STRIDES, check_kernels
from dcn_ray.models.init import init_weights
from dcn_ray.models.outputs import SegmentationOutput, check_common_arguments, conv_block

#: Input sides must be multiples of this (three 2x2 poolings).
MULTIPLE = 8
#: The salt of a re-drawn branch's deconvolution (``redraw``): its generator is ``seed/name~sham``.
SHAM_SALT = "sham"


#: What :class:`DCN` returns: ``fused`` (the sum of the three branches; softmax of it gives the
#: segmentation) and ``branches`` (the side-branch logits F1, F2, F3 from 1/2, 1/4 and 1/8
#: resolution), each (N, num_classes, H, W) at the input size. Every model family returns this shape.
DCNOutput = SegmentationOutput


class SideBranch(nn.Module):
    """Upsample a feature map by ``stride`` with a ``kernel``-sized deconvolution, then classify.

    The output is exactly ``stride`` times the input size for every ``kernel >= stride``:
    the deconvolution is as with padding 0 (size ``H*s + k - s``) cropped by ``(k - s) // 2``
    at the top/left to ``H*s``. It is computed with padding ``(k - s) // 2`` (which drops
    those rows without computing them) and, for odd ``k - s``, one trailing row/column cut.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        num_classes: int,
        *,
        kernel: int,
        stride: int,
        batch_norm: bool,
        noise: float = 0.0,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.noise = noise
        self.deconv = nn.ConvTranspose2d(
            in_channels,
            mid_channels,
            kernel,
            stride=stride,
            padding=(kernel - stride) // 2,
            bias=not batch_norm,
        )
        self.norm: nn.Module = nn.BatchNorm2d(mid_channels) if batch_norm else nn.Identity()
        self.classify = nn.Conv2d(mid_channels, num_classes, 1)

    def upsample(self, features: Tensor) -> Tensor:
        """The deconvolution alone, cropped to exactly ``stride`` times the input size."""
        height, width = features.shape[-2] * self.stride, features.shape[-1] * self.stride
        up = self.deconv(features)
        if up.shape[-2] != height or up.shape[-1] != width:  # odd k - s: one extra row/column
            up = up[..., :height, :width]
        return up

    def forward(self, features: Tensor) -> Tensor:
        if self.noise:  # a planted weakness: the branch sees its features through noise
            features = features + self.noise * features.detach().std() * torch.randn_like(features)
        return self.classify(F.relu(self.norm(self.upsample(features))))


class DCN(nn.Module):
    """Deep Contextual Network: a VGG-like trunk with three deconvolution side branches.

    Args:
        kernels: deconvolution kernel sizes (k1, k2, k3) of the branches F1, F2, F3, whose
            strides are 2, 4, 8; each k must be at least its stride.
        width: filters of the first block; blocks 2-4 have 2x, 4x, 8x (the paper: 64).
        batch_norm: BatchNorm after every convolution and deconvolution (the paper's choice).
        in_channels: image channels (1 for EM).
        num_classes: output classes (2: background, foreground).
        branch_noise: per branch F1-F3, Gaussian noise added to the branch's input features, in
            units of their standard deviation, in training and inference alike: a weakness planted
            on purpose to validate the weak-branch rule (``docs/results/weak-branch-rule.md``).
        redraw: branches (``"F1"``-``"F3"``) whose deconvolution starts from weights drawn apart
            from the unsalted model's of the same seed (:func:`~dcn_ray.models.init.init_weights`'s
            salt ``sham``): a sham control, the re-draw a guided kernel change makes, kernels kept.
            Recorded in ``kwargs`` only when set, so rebuilding a sham from its checkpoint works.
        seed: initialisation seed; each layer draws from its own generator seeded by it and the
            layer's name (:mod:`dcn_ray.models.init`), so models of one seed share every layer
            whose shape they share. Not an architecture argument: not in ``kwargs``.

    ``forward`` takes (N, in_channels, H, W) with H and W multiples of 8 and returns a
    :class:`DCNOutput`; :func:`~dcn_ray.models.outputs.pad_forward` accepts any size. ``model.kwargs`` holds the
    arguments as plain values, so ``DCN(**model.kwargs)`` rebuilds the same architecture.

    Example:
        >>> model = DCN(kernels=(4, 8, 10), width=8)
        >>> out = model(torch.zeros(2, 1, 64, 48))
        >>> tuple(out.fused.shape), [tuple(b.shape) for b in out.branches][2]
        ((2, 2, 64, 48), (2, 2, 64, 48))
        >>> DCN(kernels=(4, 8, 6))
        Traceback (most recent call last):
        ...
        ValueError: k3=6 is invalid for branch F3: the kernel must be at least the branch stride 8
    """

    family = "dcn"

    def __init__(
        self,
        *,
        kernels: Sequence[int] = REFERENCE,
        width: int = 64,
        batch_norm: bool = True,
        in_channels: int = 1,
        num_classes: int = 2,
        branch_noise: Sequence[float] = (0.0, 0.0, 0.0),
        redraw: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        super().__init__()
        kernels = check_kernels(kernels)
        noise = tuple(float(v) for v in branch_noise)
        if len(noise) != len(STRIDES) or not all(0.0 <= v < math.inf for v in noise):
            raise ValueError(f"branch_noise must be three finite numbers >= 0, got {branch_noise!r}")
        redrawn = [str(name) for name in redraw]
        if isinstance(redraw, str) or any(n not in BRANCHES for n in redrawn) or len(set(redrawn)) != len(redrawn):
            raise ValueError(f"redraw must list distinct branches among {', '.join(BRANCHES)}, got {redraw!r}")
        check_common_arguments(width=width, batch_norm=batch_norm, in_channels=in_channels, num_classes=num_classes)
        self.kwargs: dict[str, object] = {
            "kernels": list(kernels),
            "width": width,
            "batch_norm": batch_norm,
            "in_channels": in_channels,
            "num_classes": num_classes,
        }
        if any(noise):  # only a planted weakness is recorded: checkpoints without it stay as they were
            self.kwargs["branch_noise"] = list(noise)
        if redrawn:  # a sham control: its checkpoint says so, and rebuilds with it
            self.kwargs["redraw"] = redrawn
        self.kernels = kernels

        self.block1 = conv_block(in_channels, width, 2, batch_norm)
        self.block2 = conv_block(width, 2 * width, 2, batch_norm)
        self.block3 = conv_block(2 * width, 4 * width, 3, batch_norm)
        self.block4 = conv_block(4 * width, 8 * width, 3, batch_norm)
        self.pool = nn.MaxPool2d(2)
        mid = max(width // 2, 8)  # few channels at full resolution: keeps the branches cheap
        self.branches = nn.ModuleList(
            SideBranch(channels, mid, num_classes, kernel=k, stride=s, batch_norm=batch_norm, noise=n)
            for channels, k, s, n in zip((2 * width, 4 * width, 8 * width), kernels, STRIDES, noise)
        )
        init_weights(self, seed, {f"branches.{BRANCHES.index(n)}.deconv": SHAM_SALT for n in redrawn})

    def forward(self, images: Tensor) -> DCNOutput:
        if images.ndim != 4 or images.shape[1] != self.kwargs["in_channels"]:
            raise ValueError(
                f"DCN expects (N, {self.kwargs['in_channels']}, H, W) input, got shape {tuple(images.shape)}"
            )
        height, width = images.shape[-2:]
        if height % MULTIPLE or width % MULTIPLE:
            raise ValueError(
                f"DCN input height and width must be multiples of {MULTIPLE}, got "
                f"{height}x{width}; use dcn_ray.models.outputs.pad_forward for other sizes"
            )
        half = self.block2(self.pool(self.block1(images)))
        quarter = self.block3(self.pool(half))
        eighth = self.block4(self.pool(quarter))
        f1, f2, f3 = (branch(features) for branch, features in zip(self.branches, (half, quarter, eighth)))
        return DCNOutput(fused=f1 + f2 + f3, branches=(f1, f2, f3))
