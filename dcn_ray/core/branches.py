"""Score the DCN side branches F1-F3 and name the weak one: the paper's look, made a rule.

The paper picks the branch that is "not working well enough" by looking at the maps of the
branches' foreground probability. Only the sum of the three branch logits reaches the output, so
a constant moved from one branch's margin to another's changes nothing the network does; a score
that moves with it measures the parametrisation, not the branch. The rule therefore decides by
``calibrated``: each branch's margin is first shifted by the offset that calibrates it on the
validation slices (the maximum-likelihood intercept: its mean foreground probability then equals
the foreground fraction), then its separation is taken: the mean foreground probability on
foreground pixels minus that on background pixels. It is what the eye sees in the maps (scale
matters: a faint map scores low), with the one unidentified degree of freedom removed.

Reported beside it: ``separation`` (the same without calibration: not identified, kept for
comparison), ``contrast`` (ROC AUC; identified, but blind to scale), ``alone_iou`` (the branch's
own argmax) and ``drop`` (fused IoU lost without the branch). :func:`weak_across_seeds` names a
branch only when it is the weakest by more than the spread over the reference's seeds allows.

Inputs are numpy arrays: ``branches`` is a sequence of three arrays of branch logits
(N, 2, H, W) for F1, F2, F3 (class 1 = foreground), ``truth`` is an (N, H, W) bool mask.
The fused logits of the DCN are the sum of the three branches.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit
from scipy.stats import rankdata
from scipy.stats import t as student_t

from dcn_ray.core.metrics import iou
from dcn_ray.kernels import BRANCHES

logger = logging.getLogger(__name__)

#: The sd over seeds of the difference between two branches' calibrated separations, per pair
#: (F1-F2, F1-F3, F2-F3), measured on the uncrippled trials of the rule's validation
#: (docs/results/weak-branch-rule.md: 4-8-16 and 2-8-16, seeds 0-5, pooled within configuration).
SEED_SD = {(0, 1): 0.038, (0, 2): 0.117, (1, 2): 0.141}
#: The degrees of freedom of :data:`SEED_SD` (two configurations x 5).
SEED_SD_DF = 10
#: One-sided confidence with which the weakest branch must be below each other branch over seeds.
SEED_CONFIDENCE = 0.95


@dataclass(frozen=True)
class BranchScore:
    """How well one side branch separates foreground from background.

    ``calibrated``: the separation of the offset-calibrated margin (-1 to 1; decides the weak
    branch); ``separation``: mean foreground probability on foreground minus on background pixels
    of the raw margin (not identified); ``contrast``: ROC AUC of the branch's foreground margin
    (0.5 none, 1.0 perfect); ``alone_iou``: IoU of the branch's own argmax; ``drop``: fused IoU
    minus the IoU of the fused output without this branch.
    """

    name: str
    contrast: float
    alone_iou: float
    drop: float
    separation: float = float("nan")
    calibrated: float = float("nan")

    def as_metrics(self) -> dict[str, float]:
        """MLflow-ready metrics, e.g. ``{"contrast_F1": .., "alone_iou_F1": .., "drop_F1": ..}``."""
        return {
            f"contrast_{self.name}": self.contrast,
            f"alone_iou_{self.name}": self.alone_iou,
            f"drop_{self.name}": self.drop,
            f"separation_{self.name}": self.separation,
            f"calibrated_{self.name}": self.calibrated,
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


def calibration_offset(margins: np.ndarray, truth: np.ndarray) -> float:
    """The intercept c maximising the likelihood of ``truth`` under sigmoid(margin + c).

    At the optimum the mean probability equals the foreground fraction; the root is unique
    (the mean is increasing in c). Shifting ``margins`` by a constant shifts c back by it.
    """
    margins = np.ravel(margins).astype(np.float64)
    target = float(np.count_nonzero(truth)) / margins.size
    if target in (0.0, 1.0):
        return 0.0
    excess = lambda c: float(expit(margins + c).mean()) - target  # noqa: E731
    span = float(np.abs(margins).max()) + 50.0
    return float(brentq(excess, -span, span, xtol=1e-12, rtol=4 * np.finfo(float).eps, maxiter=500))


def calibrated_separation(margins: np.ndarray, truth: np.ndarray) -> float:
    """:func:`separation` of ``margins`` shifted by their :func:`calibration_offset` (identified)."""
    return separation(margins + calibration_offset(margins, truth), truth)


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
    """Calibrated and raw separation, contrast, IoU alone and drop of each branch (:class:`BranchScore`)."""
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
                calibrated=calibrated_separation(own, truth),
            )
        )
    return tuple(scores)  # type: ignore[return-value]


def one_seed_tolerance(a: int, b: int) -> float:
    """How far below branch ``b`` one seed must put branch ``a``'s calibrated separation before one
    seed may call ``a`` the weaker: the one-sided 95 % bound of the seed spread of their difference
    (Student t, :data:`SEED_SD_DF` df, times :data:`SEED_SD`): F1/F2 0.069, F1/F3 0.212, F2/F3 0.256.
    Two branches that are equally good differ in one seed by less than this 95 % of the time."""
    return float(student_t.ppf(SEED_CONFIDENCE, SEED_SD_DF)) * SEED_SD[(min(a, b), max(a, b))]


def one_seed_weak(calibrated: Sequence[float]) -> int | None:
    """The branch one seed's calibrated separations (F1, F2, F3) name weak, or None: the lowest, when it
    is below both others by more than :func:`one_seed_tolerance` (one seed cannot tell otherwise)."""
    values = [float(v) for v in calibrated]
    if len(values) != len(BRANCHES) or any(np.isnan(v) for v in values):
        return None
    lowest = int(np.argmin(values))
    others = [b for b in range(len(BRANCHES)) if b != lowest]
    return lowest if all(values[b] - values[lowest] > one_seed_tolerance(lowest, b) for b in others) else None


def weak_branch(scores: Sequence[BranchScore]) -> int | None:
    """Index (0, 1, 2) of the branch with the lowest calibrated separation in one seed, or None.

    None: one seed cannot tell, because the lowest is not below both others by more than the seed
    spread of their difference allows (:func:`one_seed_tolerance`, from the rule's validation). There
    is no tie-break towards any branch; a sweep decides over its reference's seeds with
    :func:`weak_across_seeds`.
    """
    if len(scores) != len(BRANCHES):
        raise ValueError(f"expected {len(BRANCHES)} branch scores, got {len(scores)}")
    return one_seed_weak([score.calibrated for score in scores])


def weak_across_seeds(per_seed: Sequence[Sequence[float]]) -> int | None:
    """The branch that is the weakest over seeds by more than their spread allows, or None.

    ``per_seed`` holds, per seed, the three calibrated separations (F1, F2, F3). The candidate is
    the branch with the lowest mean; it is named when, for each other branch, the one-sided 95 %
    lower confidence bound of the paired (by seed) difference other - candidate is above 0 (both
    tests must pass: an intersection-union test, so no multiplicity correction). With one seed
    there is no spread to judge by: the seed spread measured in the rule's validation decides
    (:func:`one_seed_weak`).
    """
    values = np.asarray(per_seed, dtype=np.float64).reshape(-1, len(BRANCHES))
    values = values[~np.isnan(values).any(axis=1)]
    if len(values) == 0:
        return None
    candidate = int(np.argmin(values.mean(axis=0)))
    others = [b for b in range(len(BRANCHES)) if b != candidate]
    if len(values) == 1:
        return one_seed_weak(values[0])
    quantile = float(student_t.ppf(SEED_CONFIDENCE, len(values) - 1))
    for branch in others:
        differences = values[:, branch] - values[:, candidate]
        spread = float(differences.std(ddof=1)) / np.sqrt(len(values))
        if not differences.mean() - quantile * spread > 0:
            return None
    return candidate
