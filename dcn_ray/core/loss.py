"""The training losses: fused cross-entropy plus decaying auxiliary branch losses, and two
variants for sparse foreground (class-weighted cross-entropy; cross-entropy plus soft Dice).

Every loss is ``loss(output, target, aux) -> (total, parts)``; :func:`make_loss` picks one by the
job key ``train.loss``. ``output`` is any family's :class:`~dcn_ray.models.outputs.SegmentationOutput`:
a model without branches (the U-Net) has no auxiliary term, and its parts are only "fused".

A target pixel holding :data:`~dcn_ray.core.partial.IGNORE` (unlabelled) adds nothing to any term:
each is a mean over the labelled pixels (every pixel, when all are labelled)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from dcn_ray.core.partial import IGNORE
from dcn_ray.kernels import BRANCHES
from dcn_ray.models.dcn import DCNOutput


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

    ``target`` is (N, H, W) int64 with 0 = background, 1 = foreground, IGNORE = unlabelled. Returns the total
    (for backward) and its unweighted parts, detached, in the order of LOSS_PARTS. The parts
    stay on the device (no synchronisation per step); ``loss_parts`` reads them when needed.
    """
    fused = F.cross_entropy(output.fused, target)
    branches = [F.cross_entropy(branch, target) for branch in output.branches]
    total = fused + aux * torch.stack(branches).sum() if branches else fused
    return total, torch.stack([fused, *branches]).detach()


def loss_parts(parts: Tensor) -> dict[str, float]:
    """The parts of dcn_loss as floats by name (one device synchronisation; only "fused" without branches)."""
    return dict(zip(LOSS_PARTS, parts.float().tolist()))


#: ``loss(output, target, aux) -> (total, parts)``, as :func:`dcn_loss`.
Loss = Callable[[DCNOutput, Tensor, float], tuple[Tensor, Tensor]]


def class_weights(foreground_fraction: float) -> tuple[float, float]:
    """(background, foreground) weights ``1 / (2 (1 - f))`` and ``1 / (2 f)``: each class carries half
    the loss, and a pixel of data with foreground fraction ``f`` weighs 1 on average."""
    if not 0.0 < foreground_fraction < 1.0:
        raise ValueError(f"the foreground fraction must be in (0, 1), got {foreground_fraction}")
    return 0.5 / (1.0 - foreground_fraction), 0.5 / foreground_fraction


def weighted_dcn_loss(output: DCNOutput, target: Tensor, aux: float, *, weights: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`dcn_loss` with every pixel's cross-entropy multiplied by its class's weight.

    Each term is the mean over labelled pixels of ``weights[target] * cross_entropy`` (not PyTorch's
    weighted mean, which divides by the batch's weights and so undoes the weighting of a batch
    without foreground).
    """
    scale = target.numel() / (target != IGNORE).sum().clamp_min(1)  # exactly 1 when every pixel is labelled

    def term(logits: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), target, weight=weights, reduction="none").mean() * scale

    fused = term(output.fused)
    branches = [term(branch) for branch in output.branches]
    total = fused + aux * torch.stack(branches).sum() if branches else fused
    return total, torch.stack([fused, *branches]).detach()


def soft_dice_loss(logits: Tensor, target: Tensor, *, smooth: float = 1.0) -> Tensor:
    """``1 - (2 sum(p g) + smooth) / (sum(p) + sum(g) + smooth)`` over the whole batch (nnU-Net's
    batch Dice), ``p`` the softmax foreground probability of (N, 2, H, W) logits, ``g`` the target;
    unlabelled pixels (IGNORE) count in neither."""
    probability = torch.softmax(logits.float(), dim=1)[:, 1] * (target != IGNORE)
    truth = (target == 1).to(probability.dtype)
    overlap = (probability * truth).sum()
    return 1.0 - (2.0 * overlap + smooth) / (probability.sum() + truth.sum() + smooth)


def ce_dice_loss(output: DCNOutput, target: Tensor, aux: float) -> tuple[Tensor, Tensor]:
    """:func:`dcn_loss` plus the soft Dice loss of the fused output (its part "fused" holds both)."""
    total, parts = dcn_loss(output, target, aux)
    dice = soft_dice_loss(output.fused, target)
    parts = parts.clone()
    parts[0] += dice.detach()
    return total + dice, parts


def make_loss(name: str, *, foreground_fraction: float | None = None, device: torch.device | None = None) -> Loss:
    """The loss of ``train.loss``: "ce", "weighted_ce" (needs the training split's
    ``foreground_fraction``) or "ce_dice"."""
    if name == "ce":
        return dcn_loss
    if name == "ce_dice":
        return ce_dice_loss
    if name == "weighted_ce":
        if foreground_fraction is None:
            raise ValueError("weighted_ce needs the training split's foreground fraction")
        weights = torch.tensor(class_weights(foreground_fraction), dtype=torch.float32, device=device)

        def loss(output: DCNOutput, target: Tensor, aux: float) -> tuple[Tensor, Tensor]:
            return weighted_dcn_loss(output, target, aux, weights=weights)

        return loss
    raise ValueError(f"unknown loss {name!r}; choose ce, weighted_ce or ce_dice")
