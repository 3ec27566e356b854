"""Segmentation scores of a prediction against a binary ground truth (numpy, scipy, scikit-image).

Arrays are one slice (Y, X) or a stack (Z, Y, X); ``True`` is foreground (ISBI 2012: cell
interior, label 255), ``False`` background (membrane).

Pixel scores: :func:`iou` (foreground IoU, the paper's metric), :func:`membrane_iou` (IoU of
the background class), :func:`dice`, :func:`pixel_error`.

Region scores: :func:`rand_info_scores` gives V_rand and V_info under the ISBI 2012 protocol
of Arganda-Carreras et al. (2015), Front. Neuroanat. 9:142, as the challenge's Fiji scorer
(``RandError`` / ``VariationOfInformation``, "after thinning") computes them:

1. Each 2-D slice is scored on its own; nothing joins across slices.
2. Truth cells are the 4-connected components of the truth's foreground.
3. The prediction's boundaries are thinned: its 4-connected foreground components are grown
   over its background by a watershed (flat relief, so by geodesic 4-connected distance) that
   leaves 1-pixel watershed lines where two cells meet. A slice without predicted foreground
   has no cell to grow: every pixel is a singleton, as the challenge's scorer counts it.
4. Only pixels inside truth cells count (foreground restriction). A watershed-line pixel there
   is a cluster of its own (a singleton).
5. Pair counts, a pixel paired with itself included (the challenge's N^2 normalisation):
   TP = sum_ij n_ij^2 (pairs together in truth and prediction), FP = sum_j b_j^2 - TP,
   FN = sum_i a_i^2 - TP, with n_ij the overlap of truth cell i and predicted cluster j and
   a_i, b_j their sizes. V_rand = 2 TP / (2 TP + FP + FN), the F-score of Rand split and merge,
   from the counts summed over slices.
6. V_info = I(S; T) / (0.5 H(S) + 0.5 H(T)) per slice (S prediction, T truth clusters), the
   F-score of the information-theoretic split and merge scores; the stack's V_info is the mean
   over slices that have truth foreground.

Steps 5 and 6 make a stack's score independent of how many slices it has: the same error on
every slice scores the same on 1 or 30 slices. For probability maps, :func:`~dcn_ray.core.scores.probability_scores`
takes the maximum of each score over thresholds (the challenge uses 0.0, 0.1, ...) and reports
the threshold that gave it. Both scores are in [0, 1], higher is better.

Averaging V_rand: dcn-ray pools the pair counts of all slices (step 5), so a slice weighs by its
pairs. The challenge's Fiji script (``getMaximalVRandAfterThinning(0.0, 1.0, 0.1, true)``) takes
the mean of the per-slice F-scores instead; :func:`best_rand_info` reports that one too, as
``vrand_slice_mean``, for comparison with the leaderboard. On one slice the two are equal.
Differences from the Fiji code: a slice whose truth and prediction are each one cluster scores
V_info 1 (Fiji: 0), and slices without truth foreground are left out of the means.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass
from typing import TypeVar

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

#: Thresholds over which V_rand and V_info of a probability map are maximised (foreground where
#: probability > threshold), the challenge's 0.0, 0.1, ..., 0.9.
ISBI_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    """Raise ValueError unless ``pred`` and ``truth`` are non-empty bool arrays of one 2-D/3-D shape."""
    for name, array in (("pred", pred), ("truth", truth)):
        if not isinstance(array, np.ndarray) or array.dtype != np.bool_:
            raise ValueError(f"{name} must be a numpy bool array, got {getattr(array, 'dtype', type(array))}")
        if array.ndim not in (2, 3) or array.size == 0:
            raise ValueError(f"{name} must be a non-empty (Y, X) or (Z, Y, X) array, got shape {array.shape}")
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")


def _class_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else float(np.count_nonzero(pred & truth) / union)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Intersection over Union; 1.0 when both are empty."""
    _check_pair(pred, truth)
    return _class_iou(pred, truth)


def membrane_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Background (membrane) Intersection over Union; 1.0 when neither has background."""
    _check_pair(pred, truth)
    return _class_iou(~pred, ~truth)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Dice coefficient 2|P&T| / (|P| + |T|); 1.0 when both are empty."""
    _check_pair(pred, truth)
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(pred & truth) / total)


def pixel_error(pred: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels whose class differs."""
    _check_pair(pred, truth)
    return float(np.count_nonzero(pred != truth) / pred.size)


# ----------------------------------------------------------------------------- regions of a slice


def cells(mask: np.ndarray) -> np.ndarray:
    """4-connected components of a 2-D mask: 0 background, cells 1, 2, ... (int32)."""
    labels, _ = ndimage.label(mask)  # scipy's default structure is 4-connectivity in 2-D
    return labels.astype(np.int32, copy=False)


def thinned_cells(mask: np.ndarray) -> np.ndarray:
    """The predicted cells of a 2-D mask grown over its background, 1-pixel lines (label 0) between them.

    A watershed on a flat relief from the 4-connected components floods the background by
    geodesic distance; a mask without foreground has no cell (all 0: every pixel a singleton).
    """
    markers = cells(mask)
    if not markers.any():
        return markers
    relief = np.zeros(mask.shape, dtype=np.uint8)
    return watershed(relief, markers, connectivity=1, watershed_line=True).astype(np.int32, copy=False)


@dataclass(frozen=True)
class RandCounts:
    """Foreground-restricted pair counts (each pixel also paired with itself); they add over slices."""

    true_positives: int = 0  # pairs in one truth cell and one predicted cluster
    false_positives: int = 0  # pairs in one predicted cluster but different truth cells (merges)
    false_negatives: int = 0  # pairs in one truth cell but different predicted clusters (splits)

    def __add__(self, other: RandCounts) -> RandCounts:
        return RandCounts(*(mine + theirs for mine, theirs in zip(astuple(self), astuple(other))))

    @property
    def v_rand(self) -> float:
        """2 TP / (2 TP + FP + FN); 1.0 when nothing was counted."""
        denominator = 2 * self.true_positives + self.false_positives + self.false_negatives
        return 1.0 if denominator == 0 else 2 * self.true_positives / denominator


def _sizes(labels: np.ndarray) -> np.ndarray:
    counts = np.bincount(labels) if labels.size and labels.max() < 4 * labels.size + 1024 else None
    return counts[counts > 0] if counts is not None else np.unique(labels, return_counts=True)[1]


@dataclass(frozen=True)
class _Truth:
    """What scoring needs of one truth slice, whatever the prediction: computed once per slice."""

    inside: np.ndarray  # flat indices of the pixels in truth cells; labels: their cell (int64); sizes: a_i
    labels: np.ndarray
    sizes: np.ndarray

    @classmethod
    def of(cls, truth_cells: np.ndarray) -> _Truth:
        inside = np.flatnonzero(truth_cells)
        labels = truth_cells.ravel()[inside].astype(np.int64)
        return cls(inside, labels, _sizes(labels))


def _overlaps(truth: _Truth, pred_cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster sizes inside truth cells: (truth a_i, predicted b_j, overlaps n_ij).

    Predicted label 0 (a watershed line) there counts as singletons, one cluster per pixel.
    """
    t, p = truth.labels, pred_cells.ravel()[truth.inside].astype(np.int64)
    singletons = np.ones(np.count_nonzero(p == 0), dtype=np.int64)
    lined = p > 0
    t_in, p_in = t[lined], p[lined]
    joint_codes = t_in * (int(p_in.max(initial=0)) + 1) + p_in
    return (
        truth.sizes,
        np.concatenate([_sizes(p_in), singletons]),
        np.concatenate([_sizes(joint_codes), singletons]),
    )


def _rand_counts_of(truth_sizes: np.ndarray, pred_sizes: np.ndarray, joint: np.ndarray) -> RandCounts:
    tp = int(np.sum(joint * joint))
    return RandCounts(tp, int(np.sum(pred_sizes * pred_sizes)) - tp, int(np.sum(truth_sizes * truth_sizes)) - tp)


def _entropy(sizes: np.ndarray, n: int) -> float:
    p = sizes / n
    return float(-np.sum(p * np.log(p)))


def _info_of(truth_sizes: np.ndarray, pred_sizes: np.ndarray, joint: np.ndarray) -> float | None:
    n = int(truth_sizes.sum())
    if n == 0:
        return None
    h_t, h_s = _entropy(truth_sizes, n), _entropy(pred_sizes, n)
    denominator = 0.5 * (h_s + h_t)
    if denominator <= 1e-12:
        return 1.0
    mutual_information = max(h_s + h_t - _entropy(joint, n), 0.0)
    return min(mutual_information / denominator, 1.0)


def rand_counts(truth_cells: np.ndarray, pred_cells: np.ndarray) -> RandCounts:
    """Pair counts of one slice's labellings (truth 0: not counted; prediction 0: singletons)."""
    return _rand_counts_of(*_overlaps(_Truth.of(truth_cells), pred_cells))


def info_score(truth_cells: np.ndarray, pred_cells: np.ndarray) -> float | None:
    """V_info of one slice's labellings, or None without truth foreground.

    1.0 when both are a single cluster (zero entropies); 0.0 when only one is.
    """
    return _info_of(*_overlaps(_Truth.of(truth_cells), pred_cells))


# ----------------------------------------------------------------------------- stacks


def _slices(array: np.ndarray) -> np.ndarray:
    return array.reshape((-1,) + array.shape[-2:])


T = TypeVar("T")
SliceResult = tuple[RandCounts, "float | None"]


def default_workers() -> int:
    """Threads scoring slices at once (the watershed frees the GIL): OMP_NUM_THREADS if set, else the cores."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return max(int(threads), 1) if threads.isdigit() else len(os.sched_getaffinity(0))


def _slice_result(pred: np.ndarray, truth: _Truth) -> SliceResult:
    """Pair counts and V_info of one binary prediction slice (the watershed is most of the cost)."""
    overlaps = _overlaps(truth, thinned_cells(pred))
    return _rand_counts_of(*overlaps), _info_of(*overlaps)


#: Told (slices done, slices in all) as slices are scored: a progress bar's hook.
Progress = Callable[[int, int], None]


def per_slice(
    function: Callable[..., T], workers: int | None, *slices: Sequence, progress: Progress | None = None
) -> list[T]:
    """``function`` of every slice, in order, on ``workers`` threads (default :func:`default_workers`)."""
    workers = min(default_workers() if workers is None else workers, len(slices[0]))
    results: list[T] = []
    with ThreadPoolExecutor(workers) if workers > 1 else _Inline() as pool:
        for result in pool.map(function, *slices):
            results.append(result)
            if progress is not None:
                progress(len(results), len(slices[0]))
    return results


class _Inline:
    """One thread: the calling one (``map`` as the builtin)."""

    def __enter__(self) -> _Inline:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    map = staticmethod(map)


def _rand_info(results: Iterable[SliceResult]) -> tuple[float, float, float]:
    """(V_rand from pooled counts, mean of per-slice V_rand, mean of per-slice V_info), summed in slice order."""
    counts, slice_rands, infos = RandCounts(), [], []
    for slice_counts, info in results:
        counts = counts + slice_counts
        if info is not None:
            infos.append(info)
            slice_rands.append(slice_counts.v_rand)
    return counts.v_rand, float(np.mean(slice_rands)), float(np.mean(infos))


def rand_info_scores(pred: np.ndarray, truth: np.ndarray, *, workers: int | None = None) -> tuple[float, float]:
    """``(V_rand, V_info)`` of a binary prediction under the ISBI 2012 protocol (module docstring).

    Without any truth foreground both are 1.0 if the prediction has no foreground either, else 0.0.
    ``workers``: threads scoring slices at once (default :func:`default_workers`); the scores do not depend on it.
    """
    _check_pair(pred, truth)
    if not truth.any():
        score = 0.0 if pred.any() else 1.0
        return score, score
    truths = [_Truth.of(cells(plane)) for plane in _slices(truth)]
    v_rand, _, v_info = _rand_info(per_slice(_slice_result, workers, list(_slices(pred)), truths))
    return v_rand, v_info


def vrand(pred: np.ndarray, truth: np.ndarray) -> float:
    """V_rand of a binary prediction (:func:`rand_info_scores`)."""
    return rand_info_scores(pred, truth)[0]


def vinfo(pred: np.ndarray, truth: np.ndarray) -> float:
    """V_info of a binary prediction (:func:`rand_info_scores`)."""
    return rand_info_scores(pred, truth)[1]


def _over_thresholds(probability: np.ndarray, truth: _Truth, values: Sequence[float]) -> list[SliceResult]:
    """One slice's results at each of the ascending ``values``; a mask unchanged from the last is not rescored."""
    results: list[SliceResult] = []
    for previous, value in zip([None, *values], values):
        unchanged = previous is not None and not np.any((probability > previous) & (probability <= value))
        results.append(results[-1] if unchanged else _slice_result(probability > value, truth))
    return results


def rand_info_at(
    probability: np.ndarray,
    truth: np.ndarray,
    values: Sequence[float],
    *,
    workers: int | None = None,
    progress: Progress | None = None,
) -> list[tuple[float, float, float]]:
    """``(V_rand, V_rand slice mean, V_info)`` of ``probability > value`` for each of the ascending ``values``.

    The truth side is computed once, a slice's mask unchanged between values is scored once, and slices
    are scored on ``workers`` threads (default :func:`default_workers`); none of it changes a score.
    """
    if not truth.any():  # no watershed: the scores follow from whether the prediction has foreground
        return [(score, score, score) for score in (rand_info_scores(probability > v, truth)[0] for v in values)]
    truths = [_Truth.of(cells(plane)) for plane in _slices(truth)]
    planes = list(_slices(probability))
    slices = per_slice(_over_thresholds, workers, planes, truths, [values] * len(truths), progress=progress)
    return [_rand_info(results[index] for results in slices) for index in range(len(values))]


def best_rand_info(
    probability: np.ndarray, truth: np.ndarray, values: Sequence[float], *, workers: int | None = None
) -> dict[str, tuple[float, float]]:
    """``vrand``, ``vrand_slice_mean`` and ``vinfo`` of ``probability > value``, each maximised over the
    ascending ``values``: (score, the lowest value that gives it). See :func:`rand_info_at`."""
    return best_of(rand_info_at(probability, truth, values, workers=workers), values)


def best_of(measured: Sequence[tuple[float, float, float]], values: Sequence[float]) -> dict[str, tuple[float, float]]:
    """The best of each of :func:`rand_info_at`'s scores over ``values``, with the lowest value giving it."""
    best = {key: (-1.0, 0.0) for key in ("vrand", "vrand_slice_mean", "vinfo")}
    for value, scores in zip(values, measured):
        for key, score in zip(best, scores):
            if score > best[key][0]:
                best[key] = (score, value)
    return best
