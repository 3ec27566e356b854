"""Score the DCN side branches F1-F3 and name the weak one: the paper's look, made a rule.

The paper picks the branch that is "not working well enough" by looking at the maps of the
branches' foreground probability. :func:`score_branches` measures each branch four ways and
:func:`weak_branch` decides by one of them, ``separation``: the mean foreground probability of
the branch on foreground pixels minus that on background pixels. It is what the eye sees in
the rendered maps (raw probabilities, no normalisation) and it is sensitive to scale: a map
with the right order but faint contrast scores low, as it looks. The others are reported
beside it: ``contrast`` (ROC AUC, which only sees the order of values, not their scale),
``alone_iou`` (the branch's own argmax; a branch whose logits carry only an offset scores about
the foreground fraction) and ``drop`` (fused IoU lost without the branch).

Inputs are numpy arrays: ``branches`` is a sequence of three arrays of branch logits
(N, 2, H, W) for F1, F2, F3 (class 1 = foreground), ``truth`` is an (N, H, W) bool mask.
The fused logits of the DCN are the sum of the three branches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import rankdata

from dcn_ray.core.kernels import BRANCHES
from dcn_ray.core.metrics import iou

logger = logging.getLogger(__name__)

#: Separations closer than this (probability units) do not single out a weak branch.
TIE_TOLERANCE = 0.01


@dataclass(frozen=True)
class BranchScore:
    """How well one side branch separates foreground from background.

    ``separation``: mean foreground probability on foreground minus on background pixels
    (-1 to 1; decides the weak branch); ``contrast``: ROC AUC of the branch's foreground margin
    (0.5 none, 1.0 perfect); ``alone_iou``: IoU of the branch's own argmax; ``drop``: fused IoU
    minus the IoU of the fused output without this branch.
    """

    name: str
    contrast: float
    alone_iou: float
    drop: float
    separation: float = float("nan")

    def as_metrics(self) -> dict[str, float]:
        """MLflow-ready metrics, e.g. ``{"contrast_F1": .., "alone_iou_F1": .., "drop_F1": ..}``."""
        return {
            f"contrast_{self.name}": self.contrast,
            f"alone_iou_{self.name}": self.alone_iou,
            f"drop_{self.name}": self.drop,
            f"separation_{self.name}": self.separation,
        }


def margin(logits: np.ndarray) -> np.ndarray:
    """Foreground margin logit1 - logit0 of (..., 2, H, W) logits, as float64 (..., H, W)."""
    return logits[..., 1, :, :].astype(np.float64) - logits[..., 0, :, :]


def separation(margins: np.ndarray, truth: np.ndarray) -> float:
    """Mean foreground probability (sigmoid of the margin) on ``truth`` minus on its complement."""
    probability = expit(margins)
    if not truth.any() or truth.all():
        return 0.0
    return float(probability[truth].mean() - probability[~truth].mean())


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact ROC AUC of ``scores`` for bool ``labels`` (Mann-Whitney U, ties count one half).

    0.5 when ``labels`` holds a single class (no separation can be measured).
    """
    scores = np.ravel(scores)
    labels = np.ravel(labels).astype(bool)
    positives = int(np.count_nonzero(labels))
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        logger.debug("AUC of a single-class truth is taken as 0.5")
        return 0.5
    ranks = rankdata(scores)  # average ranks for ties, 1-based
    u = float(np.sum(ranks[labels])) - positives * (positives + 1) / 2.0
    return u / (positives * negatives)


def _check_branches(branches: Sequence[np.ndarray], truth: np.ndarray) -> None:
    if len(branches) != len(BRANCHES):
        raise ValueError(f"expected {len(BRANCHES)} branch arrays (F1, F2, F3), got {len(branches)}")
    if truth.dtype != np.bool_ or truth.ndim != 3:
        raise ValueError(f"truth must be an (N, H, W) bool array, got {truth.dtype} {truth.shape}")
    expected = (truth.shape[0], 2) + truth.shape[1:]
    for name, branch in zip(BRANCHES, branches):
        if branch.shape != expected:
            raise ValueError(f"branch {name} must have shape {expected}, got {branch.shape}")


def score_branches(branches: Sequence[np.ndarray], truth: np.ndarray) -> tuple[BranchScore, BranchScore, BranchScore]:
    """Separation, contrast, IoU alone and IoU drop of each branch (see :class:`BranchScore`)."""
    _check_branches(branches, truth)
    margins = [margin(branch) for branch in branches]
    fused = sum(margins)
    fused_iou = iou(fused > 0, truth)
    scores = []
    for index, (name, own) in enumerate(zip(BRANCHES, margins)):
        others = sum(m for other, m in enumerate(margins) if other != index)
        scores.append(
            BranchScore(
                name=name,
                contrast=auc(own, truth),
                alone_iou=iou(own > 0, truth),
                drop=fused_iou - iou(others > 0, truth),
                separation=separation(own, truth),
            )
        )
    return tuple(scores)  # type: ignore[return-value]


def weak_branch(scores: Sequence[BranchScore]) -> int | None:
    """Index (0, 1, 2) of the branch with the lowest separation, or None when it is not clear.

    Not clear: the two lowest separations are within TIE_TOLERANCE of each other. There is no
    tie-break towards any branch; a sweep then takes the majority over seeds, or runs controls.
    """
    if len(scores) != len(BRANCHES):
        raise ValueError(f"expected {len(BRANCHES)} branch scores, got {len(scores)}")
    order = sorted(range(len(scores)), key=lambda i: scores[i].separation)
    lowest, runner_up = scores[order[0]].separation, scores[order[1]].separation
    if np.isnan(lowest) or runner_up - lowest < TIE_TOLERANCE:
        return None
    return order[0]
