"""Segmentation scores of a binary prediction against a binary truth (numpy only).

Every function takes two numpy bool arrays of equal shape: one slice (Y, X) or a
stack (Z, Y, X). ``True`` is foreground (cell interior in ISBI 2012).

- :func:`iou` is the paper's metric: foreground Intersection over Union.
- :func:`rand_info_scores` is the current ISBI 2012 leaderboard metric, the
  foreground-restricted Rand and information scores V_rand and V_info of
  Arganda-Carreras et al. (2015), Front. Neuroanat. 9:142. Higher is better, 1 is perfect.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _check_pair(pred: np.ndarray, truth: np.ndarray) -> None:
    """Raise ValueError unless ``pred`` and ``truth`` are non-empty bool arrays of one 2-D/3-D shape."""
    for name, array in (("pred", pred), ("truth", truth)):
        if not isinstance(array, np.ndarray) or array.dtype != np.bool_:
            raise ValueError(f"{name} must be a numpy bool array, got {getattr(array, 'dtype', type(array))}")
        if array.ndim not in (2, 3) or array.size == 0:
            raise ValueError(f"{name} must be a non-empty (Y, X) or (Z, Y, X) array, got shape {array.shape}")
    if pred.shape != truth.shape:
        raise ValueError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Foreground Intersection over Union; 1.0 when both are empty."""
    _check_pair(pred, truth)
    union = np.count_nonzero(pred | truth)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & truth) / union)


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


def _components(mask: np.ndarray) -> np.ndarray:
    """Connected components of ``mask``, 4-connected per 2-D slice, labels unique across slices.

    Background is 0, components are 1, 2, ... (int64, same shape as ``mask``).
    """
    stack = mask.reshape((-1,) + mask.shape[-2:])
    labels = np.zeros(stack.shape, dtype=np.int64)
    offset = 0
    for z, plane in enumerate(stack):
        plane_labels, count = ndimage.label(plane)  # default structure: 4-connectivity in 2-D
        labels[z] = np.where(plane_labels > 0, plane_labels + offset, 0)
        offset += count
    return labels.reshape(mask.shape)


def _entropy(probabilities: np.ndarray) -> float:
    """Shannon entropy (nats) of positive probabilities."""
    return float(-np.sum(probabilities * np.log(probabilities)))


def rand_info_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """The ISBI 2012 foreground-restricted scores ``(V_rand, V_info)``, each in [0, 1].

    The segmentations S (prediction) and T (truth) are the connected components of
    the foreground (4-connected, slice by slice for a stack). Only pixels where the
    truth is foreground are counted; there, prediction background is one more
    cluster of S (label 0), as in scikit-image's ``adapted_rand_error``. With the
    joint distribution p_ij of (S, T) labels over those pixels and its marginals
    s_i and t_j:

    - V_rand = sum p_ij^2 / (0.5 sum s_i^2 + 0.5 sum t_j^2), the F-score of the
      Rand split and merge scores (1 - adapted Rand error). Like the paper's
      formula, and unlike scikit-image (which counts pairs of distinct pixels),
      a pixel also pairs with itself.
    - V_info = I(S; T) / (0.5 H(S) + 0.5 H(T)).

    Edge cases: with no truth-foreground pixel, both scores are 1.0 if the
    prediction has no foreground either, else 0.0. When S and T are both a single
    cluster (zero entropies) V_info is 1.0. A prediction that is all background
    over the truth's cells scores as one cluster merging all of them (1.0 if the
    truth has a single cell): these scores judge how cells are split and merged,
    IoU judges how much of them is found.
    """
    _check_pair(pred, truth)
    inside = truth
    if not inside.any():
        score = 0.0 if pred.any() else 1.0
        return score, score
    s_labels = _components(pred)[inside]
    t_labels = _components(truth)[inside]
    n = t_labels.size
    s = np.unique(s_labels, return_counts=True)[1] / n
    t = np.unique(t_labels, return_counts=True)[1] / n
    pair_codes = s_labels * (int(t_labels.max()) + 1) + t_labels
    p = np.unique(pair_codes, return_counts=True)[1] / n

    v_rand = float(np.sum(p * p) / (0.5 * np.sum(s * s) + 0.5 * np.sum(t * t)))

    h_s, h_t = _entropy(s), _entropy(t)
    mutual_information = max(h_s + h_t - _entropy(p), 0.0)
    denominator = 0.5 * h_s + 0.5 * h_t
    v_info = 1.0 if denominator <= 0.0 else min(mutual_information / denominator, 1.0)
    return min(v_rand, 1.0), v_info


def segmentation_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """All scores: keys ``iou``, ``dice``, ``pixel_error``, ``vrand``, ``vinfo``."""
    v_rand, v_info = rand_info_scores(pred, truth)
    return {
        "iou": iou(pred, truth),
        "dice": dice(pred, truth),
        "pixel_error": pixel_error(pred, truth),
        "vrand": v_rand,
        "vinfo": v_info,
    }
