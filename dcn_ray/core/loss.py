"""The DCN training loss: fused cross-entropy plus decaying auxiliary branch losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dcn_ray.core.dcn import DCNOutput
from dcn_ray.core.kernels import BRANCHES


def aux_weight(step: int, total_steps: int, *, start: float = 1.0, end: float = 0.01) -> float:
    """The auxiliary-loss weight at ``step`` of ``total_steps`` (0-based).

    Decays geometrically from ``start`` at step 0 to ``end`` at step ``total_steps - 1``;
    steps past the end keep ``end``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if start <= 0 or end <= 0:
        raise ValueError(f"start and end must be positive, got start={start}, end={end}")
    if total_steps == 1:
        return float(start)
    fraction = min(step / (total_steps - 1), 1.0)
    return float(start * (end / start) ** fraction)


#: Names of the loss parts, in the order dcn_loss returns them.
LOSS_PARTS: tuple[str, ...] = ("fused", *BRANCHES)


def dcn_loss(output: DCNOutput, target: Tensor, aux: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy of the fused logits plus ``aux`` times the sum of the branch cross-entropies.

    ``target`` is (N, H, W) int64 with 0 = background, 1 = foreground. Returns the total
    (for backward) and its unweighted parts, detached, in the order of LOSS_PARTS. The parts
    stay on the device (no synchronisation per step); ``loss_parts`` reads them when needed.
    """
    fused = F.cross_entropy(output.fused, target)
    branches = [F.cross_entropy(branch, target) for branch in output.branches]
    total = fused + aux * torch.stack(branches).sum()
    return total, torch.stack([fused, *branches]).detach()


def loss_parts(parts: Tensor) -> dict[str, float]:
    """The parts of dcn_loss as floats by name (one device synchronisation)."""
    return dict(zip(LOSS_PARTS, parts.float().tolist()))
