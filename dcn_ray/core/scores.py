"""The scores dcn-ray computes, one registry (key, function, label, direction), and scoring by it.

Training logs each score as ``val_<key>``, a trial's test split as ``test_<key>``; the headline (the
foreground IoU, the paper's metric) chooses the checkpoint (``best_val_iou``), the searcher's mode,
and leads reports and registry versions. Training, reports, model sources and the planner read the
names from here; the functions themselves are :mod:`dcn_ray.core.metrics`. A new score is one entry
in :data:`SCORES` (and its function).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dcn_ray.core import metrics


@dataclass(frozen=True)
class Score:
    key: str
    label: str
    #: The score of a bool prediction against its bool truth, (Y, X) or (Z, Y, X).
    function: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool = True

    def better(self, new: float, old: float) -> bool:
        """Whether ``new`` is a strictly better value of this score than ``old``."""
        return new > old if self.higher_is_better else new < old


#: Every score, in report order.
SCORES = (
    Score("iou", "IoU", metrics.iou),
    Score("dice", "Dice", metrics.dice),
    Score("pixel_error", "pixel error", metrics.pixel_error, higher_is_better=False),
    Score("membrane_iou", "membrane IoU", metrics.membrane_iou),
    Score("vrand", "V_rand", metrics.vrand),
    Score("vinfo", "V_info", metrics.vinfo),
)
SCORE_KEYS = tuple(score.key for score in SCORES)
#: The region scores: one watershed per slice gives both, so they are computed together.
REGION_KEYS = ("vrand", "vinfo")
#: The score that chooses checkpoints, trials and registry versions.
HEADLINE = "iou"
HEADLINE_SCORE = next(score for score in SCORES if score.key == HEADLINE)
#: Ray Tune's mode for the headline.
HEADLINE_MODE = "max" if HEADLINE_SCORE.higher_is_better else "min"
#: Its validation value at an evaluation, and the best of a run so far (Tune's metric).
VAL_HEADLINE, BEST_VAL_HEADLINE = f"val_{HEADLINE}", f"best_val_{HEADLINE}"
#: The headline on the test split (a trial scores it once, with the checkpoint validation chose).
TEST_HEADLINE = f"test_{HEADLINE}"
#: The test-split columns of a trial (empty without a test split).
TEST_COLUMNS = tuple(f"test_{key}" for key in SCORE_KEYS)


def label(column: str) -> str:
    """``test_vrand`` -> ``test V_rand``, ``best_val_iou`` -> ``best val IoU``."""
    for prefix in ("best_val_", "val_", "test_"):
        if column.startswith(prefix):
            key = column[len(prefix) :]
            name = next((s.label for s in SCORES if s.key == key), key)
            return f"{prefix.rstrip('_').replace('_', ' ')} {name}"
    return column


def _pixel_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {score.key: score.function(pred, truth) for score in SCORES if score.key not in REGION_KEYS}


def segmentation_scores(
    pred: np.ndarray, truth: np.ndarray, *, labelled: np.ndarray | None = None, workers: int | None = None
) -> dict[str, float]:
    """Every score of a binary prediction, keyed and ordered as :data:`SCORES` (python floats).

    V_rand and V_info come from one watershed per slice, on ``workers`` threads
    (:func:`~dcn_ray.core.metrics.rand_info_scores`). ``labelled`` (bool, as ``truth``; None: every
    pixel) restricts every score to the labelled pixels (:func:`labelled_scores`).
    """
    if labelled is not None:
        return labelled_scores(pred, truth, labelled, workers=workers)
    region = dict(zip(REGION_KEYS, metrics.rand_info_scores(pred, truth, workers=workers)))
    computed = {**_pixel_scores(pred, truth), **region}
    return {key: computed[key] for key in SCORE_KEYS}


def labelled_scores(
    pred: np.ndarray, truth: np.ndarray, labelled: np.ndarray, *, workers: int | None = None
) -> dict[str, float]:
    """:func:`segmentation_scores` of partly labelled truth: what the prediction or the truth hold at
    unlabelled pixels changes no score.

    Slices without a labelled pixel are left out. The pixel scores count the labelled pixels alone;
    V_rand and V_info score the prediction cut to the labelled pixels (background elsewhere, so the
    watershed may flood across unlabelled pixels) against the truth cells of labelled foreground.
    """
    if labelled.shape != truth.shape or labelled.dtype != np.bool_:
        raise ValueError(f"labelled must be a bool array shaped as the truth {truth.shape}")
    shape = (-1,) + truth.shape[-2:]
    keep = labelled.reshape(shape).any(axis=(1, 2))
    if not keep.any():
        raise ValueError("no labelled pixel to score")
    pred, truth, labelled = (a.reshape(shape)[keep] for a in (pred, truth, labelled))
    truth = truth & labelled
    region = metrics.rand_info_scores(pred & labelled, truth, workers=workers)
    computed = {**_pixel_scores(pred[labelled][None], truth[labelled][None]), **dict(zip(REGION_KEYS, region))}
    return {key: computed[key] for key in SCORE_KEYS}


def probability_scores(
    probability: np.ndarray,
    truth: np.ndarray,
    *,
    threshold: float = 0.5,
    thresholds: Sequence[float] = metrics.ISBI_THRESHOLDS,
    workers: int | None = None,
) -> dict[str, float]:
    """Scores of a foreground-probability map in [0, 1] (foreground where probability > threshold).

    IoU, Dice, pixel error and membrane IoU at ``threshold``; V_rand and V_info each maximised
    over ``thresholds`` as the challenge does, with ``vrand_threshold`` / ``vinfo_threshold``
    saying which gave them (the lowest on ties); ``vrand_slice_mean`` (and its threshold): the
    challenge script's mean of per-slice V_rand, maximised alike. A map holding only 0 and 1 is a
    segmentation: every threshold in [0, 1) gives the same mask, and ``threshold`` is reported.
    See :func:`~dcn_ray.core.metrics.best_rand_info` for what is computed once.
    """
    if not isinstance(probability, np.ndarray) or probability.dtype.kind != "f":
        raise ValueError(f"probability must be a float numpy array, got {getattr(probability, 'dtype', None)}")
    if not thresholds or not all(0.0 <= t < 1.0 for t in thresholds) or not 0.0 <= threshold < 1.0:
        raise ValueError("thresholds must lie in [0, 1)")
    mask, at = probability > threshold, float(threshold)
    scores: dict[str, float] = {**_pixel_scores(mask, truth), "threshold": at}
    binary = bool(np.all((probability == 0.0) | (probability == 1.0)))
    values = [at] if binary or not truth.any() else sorted(float(t) for t in thresholds)
    for key, (score, value) in metrics.best_rand_info(probability, truth, values, workers=workers).items():
        scores[key], scores[f"{key}_threshold"] = score, value
    return scores


def baseline_scores(truth: np.ndarray, labelled: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Scores of the trivial predictions on ``truth``: ``all_foreground`` and ``all_background``.

    The floor any model must beat on the same slices (on ISBI 2012 all-foreground IoU is about 0.8);
    on the ``labelled`` pixels only for partly labelled truth.
    """
    return {
        "all_foreground": segmentation_scores(np.ones_like(truth, dtype=bool), truth, labelled=labelled),
        "all_background": segmentation_scores(np.zeros_like(truth, dtype=bool), truth, labelled=labelled),
    }
