"""Segmentation scores on tiny hand-worked arrays."""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from dcn_ray.core.metrics import dice, iou, pixel_error, rand_info_scores, segmentation_scores


def row(text: str) -> np.ndarray:
    """'11011' -> a (1, 5) bool slice."""
    return np.array([[c == "1" for c in text]])


def test_iou_dice_pixel_error_hand_worked() -> None:
    pred = row("111100")
    truth = row("011110")
    # intersection 3 (pixels 1-3), union 5 (pixels 0-4), |P| + |T| = 4 + 4,
    # differing pixels 0 and 4 of 6.
    assert iou(pred, truth) == pytest.approx(3 / 5)
    assert dice(pred, truth) == pytest.approx(2 * 3 / 8)
    assert pixel_error(pred, truth) == pytest.approx(2 / 6)


def test_empty_cases_of_overlap_scores() -> None:
    empty = row("0000")
    full = row("1111")
    assert iou(empty, empty) == 1.0
    assert dice(empty, empty) == 1.0
    assert pixel_error(empty, empty) == 0.0
    assert iou(empty, full) == 0.0
    assert dice(full, empty) == 0.0
    assert pixel_error(empty, full) == 1.0


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        iou(row("11"), row("111"))
    with pytest.raises(ValueError, match="bool"):
        dice(np.ones((2, 2)), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        rand_info_scores(np.ones(4, bool), np.ones(4, bool))


def test_perfect_prediction_scores_one() -> None:
    truth = row("1101101")
    v_rand, v_info = rand_info_scores(truth.copy(), truth)
    assert (v_rand, v_info) == (pytest.approx(1.0), pytest.approx(1.0))
    scores = segmentation_scores(truth.copy(), truth)
    assert scores == {"iou": 1.0, "dice": 1.0, "pixel_error": 0.0, "vrand": 1.0, "vinfo": 1.0}


def test_split_of_one_true_cell() -> None:
    # Truth: one cell T of 5 pixels. Prediction: A A 0 B B (label 0 = predicted
    # background inside the truth, one more cluster).
    # p = (A,T) 2/5, (0,T) 1/5, (B,T) 2/5 -> sum p^2 = 9/25; s the same -> 9/25; t: 1.
    # V_rand = (9/25) / (0.5 * 9/25 + 0.5 * 1) = 18/34 = 9/17.
    # H(T) = 0 and H(S,T) = H(S), so I(S;T) = 0 -> V_info = 0.
    v_rand, v_info = rand_info_scores(row("11011"), row("11111"))
    assert v_rand == pytest.approx(9 / 17)
    assert v_info == pytest.approx(0.0)


def test_merge_of_two_true_cells() -> None:
    # Truth: T1 T1 | T2 T2 (pixel 2 is membrane, ignored). Prediction: one cell A.
    # p = (A,T1) 1/2, (A,T2) 1/2 -> sum p^2 = 1/2; s: 1; t: 1/2.
    # V_rand = 0.5 / (0.5 * 1 + 0.5 * 0.5) = 2/3. H(S) = 0 -> I = 0 -> V_info = 0.
    v_rand, v_info = rand_info_scores(row("11111"), row("11011"))
    assert v_rand == pytest.approx(2 / 3)
    assert v_info == pytest.approx(0.0)


def test_partial_split_and_merge() -> None:
    # Truth T1 T1 _ T2 T2; prediction 1 1 1 1 0 -> over truth pixels (0, 1, 3, 4):
    # S = A A A 0, T = T1 T1 T2 T2.
    # p = (A,T1) 2/4, (A,T2) 1/4, (0,T2) 1/4 -> sum p^2 = 6/16; s = 3/4, 1/4 -> 10/16;
    # t = 1/2, 1/2 -> 8/16. V_rand = (6/16) / (0.5 * 10/16 + 0.5 * 8/16) = 6/9.
    h_s = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h_t = math.log(2)
    h_st = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))  # = 1.5 ln 2
    expected_info = (h_s + h_t - h_st) / (0.5 * h_s + 0.5 * h_t)  # about 0.344
    v_rand, v_info = rand_info_scores(row("11110"), row("11011"))
    assert v_rand == pytest.approx(6 / 9)
    assert v_info == pytest.approx(expected_info)
    assert 0.3 < v_info < 0.4


def test_empty_prediction_merges_all_cells() -> None:
    # All truth pixels fall in prediction cluster 0: a merge of T1 and T2 (as above, 2/3).
    assert rand_info_scores(row("00000"), row("11011")) == (pytest.approx(2 / 3), pytest.approx(0.0))
    assert iou(row("00000"), row("11011")) == 0.0


def test_empty_truth_and_both_empty() -> None:
    assert rand_info_scores(row("00100"), row("00000")) == (0.0, 0.0)
    assert rand_info_scores(row("00000"), row("00000")) == (1.0, 1.0)
    scores = segmentation_scores(row("00000"), row("00000"))
    assert scores["vrand"] == scores["vinfo"] == scores["iou"] == 1.0


def test_truth_background_pixels_do_not_count() -> None:
    truth = np.zeros((6, 8), bool)
    truth[1:3, 1:3] = True  # cell 1
    truth[1:3, 4:6] = True  # cell 2
    pred = np.zeros_like(truth)
    pred[1:3, 1:3] = True
    pred[1, 4] = True  # part of cell 2 only
    base = rand_info_scores(pred, truth)
    noisy = pred.copy()
    noisy[4:6, :] = True  # a false-positive blob on truth background, not touching any cell
    noisy[0, 7] = True
    assert rand_info_scores(noisy, truth) == base
    assert iou(noisy, truth) < iou(pred, truth)  # while IoU does see it


def test_4_connectivity_and_stack_slices_are_separate() -> None:
    # Two pixels touching only diagonally are two cells, in the truth and in the prediction.
    diagonal = np.array([[1, 0], [0, 1]], bool)
    assert rand_info_scores(diagonal, diagonal) == (pytest.approx(1.0), pytest.approx(1.0))
    # Same cell position in two slices: two truth cells. A prediction that keeps them
    # apart is perfect; components never join across slices.
    truth = np.ones((2, 2, 2), bool)
    assert rand_info_scores(truth.copy(), truth) == (pytest.approx(1.0), pytest.approx(1.0))
    # Dropping column 1 of slice 0 splits truth cell T0 into A (2 px) and background 0 (2 px);
    # slice 1 is cell B = T1. p = 2/8, 2/8, 4/8 -> sum p^2 = 24/64 = sum s^2; sum t^2 = 32/64.
    # V_rand = 24 / (0.5 * 24 + 0.5 * 32) = 6/7.
    pred = truth.copy()
    pred[0, :, 1] = False
    v_rand, _ = rand_info_scores(pred, truth)
    assert v_rand == pytest.approx(6 / 7)


def brute_force_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Reference V_rand / V_info with explicit per-slice labelling and Python counters."""
    s_all, t_all = [], []
    for z in range(pred.shape[0]):
        s_lab, _ = ndimage.label(pred[z])
        t_lab, _ = ndimage.label(truth[z])
        for y, x in zip(*np.nonzero(truth[z])):
            s_all.append((z, int(s_lab[y, x])) if s_lab[y, x] else 0)
            t_all.append((z, int(t_lab[y, x])))
    n = len(t_all)
    joint = Counter(zip(s_all, t_all))
    s_count, t_count = Counter(s_all), Counter(t_all)
    sq = lambda c: sum((v / n) ** 2 for v in c.values())  # noqa: E731
    ent = lambda c: -sum(v / n * math.log(v / n) for v in c.values())  # noqa: E731
    v_rand = sq(joint) / (0.5 * sq(s_count) + 0.5 * sq(t_count))
    h_s, h_t = ent(s_count), ent(t_count)
    v_info = (h_s + h_t - ent(joint)) / (0.5 * h_s + 0.5 * h_t)
    return v_rand, v_info


def test_matches_brute_force_on_random_stacks() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        truth = rng.random((3, 12, 12)) < 0.6
        pred = truth ^ (rng.random(truth.shape) < 0.15)
        got = rand_info_scores(pred, truth)
        assert got == pytest.approx(brute_force_scores(pred, truth))
        assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0


def test_fast_on_isbi_sized_stack() -> None:
    rng = np.random.default_rng(0)
    truth = ndimage.binary_opening(rng.random((3, 512, 512)) < 0.7)
    pred = truth ^ (rng.random(truth.shape) < 0.05)
    start = time.perf_counter()
    scores = segmentation_scores(pred, truth)
    assert time.perf_counter() - start < 5.0
    assert all(0.0 <= value <= 1.0 for value in scores.values())


def test_scores_are_python_floats() -> None:
    scores = segmentation_scores(row("1101"), row("1001"))
    assert all(type(value) is float for value in scores.values())
