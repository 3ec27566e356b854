"""Segmentation scores: hand-worked cases, the ISBI 2012 protocol's properties, scikit-image agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import adapted_rand_error, variation_of_information
from tiffs import ISBI

from dcn_ray.core.metrics import (
    RandCounts,
    cells,
    dice,
    info_score,
    iou,
    membrane_iou,
    pixel_error,
    rand_counts,
    rand_info_scores,
    thinned_cells,
)
from dcn_ray.core.scores import baseline_scores, keys_of, probability_scores, segmentation_scores


def row(text: str) -> np.ndarray:
    """'11011' -> a (1, 5) bool slice."""
    return np.array([[c == "1" for c in text]])


def grid(*rows: str) -> np.ndarray:
    return np.array([[c == "1" for c in text] for text in rows])


# ----------------------------------------------------------------------------- pixel scores


def test_iou_dice_pixel_error_membrane_iou_hand_worked() -> None:
    pred = row("111100")
    truth = row("011110")
    # foreground: intersection 3 (pixels 1-3), union 5 (0-4); |P| + |T| = 8; pixels 0 and 4 differ.
    # background: pred {4, 5}, truth {0, 5}: intersection {5}, union {0, 4, 5}.
    assert iou(pred, truth) == pytest.approx(3 / 5)
    assert dice(pred, truth) == pytest.approx(2 * 3 / 8)
    assert pixel_error(pred, truth) == pytest.approx(2 / 6)
    assert membrane_iou(pred, truth) == pytest.approx(1 / 3)


def test_empty_cases_of_overlap_scores() -> None:
    empty, full = row("0000"), row("1111")
    assert iou(empty, empty) == dice(empty, empty) == 1.0
    assert pixel_error(empty, empty) == 0.0
    assert iou(empty, full) == dice(full, empty) == 0.0
    assert pixel_error(empty, full) == 1.0
    assert membrane_iou(full, full) == 1.0 and membrane_iou(empty, full) == 0.0


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        iou(row("11"), row("111"))
    with pytest.raises(ValueError, match="bool"):
        dice(np.ones((2, 2)), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        rand_info_scores(np.ones(4, bool), np.ones(4, bool))
    with pytest.raises(ValueError, match="float"):
        probability_scores(np.ones((2, 2), bool), np.ones((2, 2), bool))


# ----------------------------------------------------------------------------- thinning


def test_thinning_grows_cells_and_leaves_one_pixel_lines() -> None:
    # A gap of 3 pixels between two cells: each cell takes its neighbour, the middle is a line.
    assert thinned_cells(row("11000111")).tolist() == [[1, 1, 1, 0, 2, 2, 2, 2]]
    # A thick membrane band becomes a single line row.
    band = grid("11111", "00000", "00000", "00000", "11111")
    assert thinned_cells(band).tolist() == [[1] * 5, [1] * 5, [0] * 5, [2] * 5, [2] * 5]
    # One cell takes the whole slice; no cell at all: every pixel a singleton (label 0), as the
    # challenge's scorer counts an empty prediction.
    assert thinned_cells(row("10000")).tolist() == [[1] * 5]
    assert thinned_cells(row("0000")).tolist() == [[0] * 4]
    # 4-connectivity: diagonal neighbours are two cells.
    assert cells(grid("10", "01")).max() == 2


# ----------------------------------------------------------------------------- hand-worked V_rand / V_info


def test_split_of_one_true_cell() -> None:
    # Truth: one cell T of 5 px. Prediction 11011 thins to A A | B B with a line pixel in the
    # middle, a singleton. TP = 2^2 + 2^2 + 1 = 9 = sum b^2 -> FP = 0; sum a^2 = 25 -> FN = 16.
    # V_rand = 18 / (18 + 16) = 9/17. H(T) = 0 so I(S;T) = 0 -> V_info = 0.
    v_rand, v_info = rand_info_scores(row("11011"), row("11111"))
    assert v_rand == pytest.approx(9 / 17)
    assert v_info == pytest.approx(0.0)
    assert rand_counts(cells(row("11111")), thinned_cells(row("11011"))) == RandCounts(9, 0, 16)


def test_merge_of_two_true_cells() -> None:
    # Truth T1 T1 | T2 T2 (pixel 2 membrane, not counted); prediction one cell A.
    # TP = 2^2 + 2^2 = 8, sum b^2 = 16 -> FP = 8, sum a^2 = 8 -> FN = 0: V_rand = 16/24.
    v_rand, v_info = rand_info_scores(row("11111"), row("11011"))
    assert v_rand == pytest.approx(2 / 3)
    assert v_info == pytest.approx(0.0)


def test_thinning_forgives_thick_predicted_membranes() -> None:
    # The prediction finds only one pixel of the single cell: thinned, it covers the cell.
    assert rand_info_scores(row("10000"), row("11111")) == (1.0, 1.0)
    assert iou(row("10000"), row("11111")) == pytest.approx(0.2)  # while IoU sees the loss


def test_line_across_a_true_cell() -> None:
    # A 3 x 3 cell cut by a predicted membrane row: A (3 px), line (3 singletons), B (3 px).
    # TP = 9 + 9 + 3 = 21 = sum b^2 -> FP = 0; sum a^2 = 81 -> FN = 60. V_rand = 42/102.
    # H(T) = 0 -> V_info = 0.
    truth = np.ones((3, 3), bool)
    pred = grid("111", "000", "111")
    assert rand_info_scores(pred, truth) == (pytest.approx(42 / 102), pytest.approx(0.0))


def test_split_and_merge_at_once() -> None:
    # Truth: cell T1 in row 0, cell T2 in row 2 (row 1 membrane). Prediction: cells A (column 0)
    # and B (column 2), each running across both truth cells; column 1 thins to a line.
    truth = grid("111", "000", "111")
    pred = grid("101", "101", "101")
    assert thinned_cells(pred)[:, 1].tolist() == [0, 0, 0]
    # Inside the truth (n = 6): S = A 0 B / A 0 B, T = T1 x3 / T2 x3. Joint clusters: six of 1 px.
    # TP = 6; sum b^2 = 2^2 + 2^2 + 1 + 1 = 10 -> FP = 4; sum a^2 = 18 -> FN = 12. V_rand = 12/28.
    v_rand, v_info = rand_info_scores(pred, truth)
    assert v_rand == pytest.approx(12 / (12 + 4 + 12))
    h_t = math.log(2)  # two cells of 3
    h_s = -(2 * (2 / 6) * math.log(2 / 6) + 2 * (1 / 6) * math.log(1 / 6))  # A, B of 2; 2 singletons
    h_st = math.log(6)  # six joint clusters of 1
    assert v_info == pytest.approx((h_s + h_t - h_st) / (0.5 * h_s + 0.5 * h_t))
    assert 0.0 < v_info < 0.5


def test_counts_sum_over_slices_and_info_is_the_slice_mean() -> None:
    # Slice 0: a perfect single 4-px cell (TP 16). Slice 1: the split of test_split_of_one_true_cell
    # (TP 9, FN 16). Summed: V_rand = 50 / (50 + 16); V_info = mean(1, 0).
    truth = np.stack([row("11110"), row("11111")])
    pred = np.stack([row("11110"), row("11011")])
    v_rand, v_info = rand_info_scores(pred, truth)
    assert v_rand == pytest.approx(50 / 66)
    assert v_rand != pytest.approx((1 + 9 / 17) / 2)  # not a mean of slice scores
    assert v_info == pytest.approx(0.5)
    # The challenge script's macro average, reported beside it for probability maps.
    scores = probability_scores(pred.astype(np.float32), truth)
    assert scores["vrand"] == pytest.approx(50 / 66)
    assert scores["vrand_slice_mean_best"] == pytest.approx((1 + 9 / 17) / 2)


def test_slices_without_truth_foreground() -> None:
    assert info_score(cells(row("000")), thinned_cells(row("010"))) is None
    truth = np.stack([row("000"), row("111")])
    assert rand_info_scores(np.stack([row("010"), row("111")]), truth) == (1.0, 1.0)
    assert rand_info_scores(row("00100"), row("00000")) == (0.0, 0.0)
    assert rand_info_scores(row("00000"), row("00000")) == (1.0, 1.0)


def test_truth_background_pixels_do_not_count() -> None:
    truth = np.zeros((8, 8), bool)
    truth[1:3, 1:3] = True  # cell 1
    truth[1:3, 5:7] = True  # cell 2
    pred = truth.copy()
    pred[1, 3:5] = True  # merges the two cells
    base = rand_info_scores(pred, truth)
    noisy = pred.copy()
    noisy[6:8, :] = True  # a false-positive blob on the truth's membrane, away from the cells
    assert rand_info_scores(noisy, truth) == base
    assert base[0] < 1.0
    assert iou(noisy, truth) < iou(pred, truth)  # while IoU does see it


# ----------------------------------------------------------------------------- protocol properties


def test_same_error_scores_the_same_on_1_3_and_6_slices() -> None:
    rng = np.random.default_rng(5)
    truth = ndimage.binary_opening(rng.random((64, 64)) < 0.75)
    pred = truth.copy()
    pred[20:40, 30] = False  # a false membrane splitting some cells
    pred[10, :] = True  # a missing membrane merging others
    scores = [rand_info_scores(np.stack([pred] * k), np.stack([truth] * k)) for k in (1, 3, 6)]
    assert scores[0][0] < 0.99 and scores[0][1] < 0.99
    for other in scores[1:]:
        assert other == (pytest.approx(scores[0][0], abs=1e-12), pytest.approx(scores[0][1], abs=1e-12))


@pytest.mark.skipif(not (ISBI / "train-labels.tif").exists(), reason="ISBI 2012 data absent")
def test_eroded_isbi_truth_keeps_v_rand_near_one() -> None:
    from dcn_ray.io.tiff import read_labels

    truth = read_labels(ISBI / "train-labels.tif", 255)[27:30]
    eroded = np.stack([ndimage.binary_erosion(plane) for plane in truth])  # every cell loses 1 px
    v_rand, v_info = rand_info_scores(eroded, truth)
    assert v_rand > 0.999 and v_info > 0.995  # the challenge protocol: no topology change, no loss
    assert iou(eroded, truth) < 0.93  # while the pixels do differ
    floor = baseline_scores(truth)
    assert 0.78 < floor["all_foreground"]["iou"] < 0.83  # the majority class floor (the 0.804)
    assert floor["all_background"]["iou"] == 0.0
    assert floor["all_foreground"]["vrand"] < 0.3


# ----------------------------------------------------------------------------- scikit-image agreement


def _with_singletons(pred_cells: np.ndarray, truth_cells: np.ndarray) -> np.ndarray:
    """Give each prediction-0 pixel inside the truth a label of its own (scikit-image's 0 is one cluster)."""
    out = pred_cells.astype(np.int64).copy()
    lines = (out == 0) & (truth_cells > 0)
    out[lines] = out.max() + 1 + np.arange(np.count_nonzero(lines))
    return out


def test_agrees_with_scikit_image_on_random_slices() -> None:
    rng = np.random.default_rng(3)
    for _ in range(6):
        truth = cells(ndimage.binary_opening(rng.random((40, 40)) < 0.7))
        pred = thinned_cells(ndimage.binary_opening(rng.random((40, 40)) < 0.7))
        counts = rand_counts(truth, pred)
        n = np.count_nonzero(truth)
        # scikit-image counts pairs of distinct pixels: our counts less the n self-pairs.
        tp = counts.true_positives - n
        error, *split_merge = adapted_rand_error(truth, _with_singletons(pred, truth))
        assert 1.0 - error == pytest.approx(2 * tp / (2 * tp + counts.false_positives + counts.false_negatives))
        merge, split = tp / (tp + counts.false_positives), tp / (tp + counts.false_negatives)
        assert sorted(split_merge) == pytest.approx(sorted([merge, split]))  # its names for them vary
        # V_info from scikit-image's conditional entropies H(S|T), H(T|S) and H(T).
        bits = variation_of_information(truth, _with_singletons(pred, truth), ignore_labels=(0,))
        h_s_given_t, h_t_given_s = np.asarray(bits) * math.log(2)  # scikit-image counts in bits
        sizes = np.unique(truth[truth > 0], return_counts=True)[1] / n
        h_t = -np.sum(sizes * np.log(sizes))
        mutual = h_t - h_t_given_s
        assert info_score(truth, pred) == pytest.approx(2 * mutual / (h_t + mutual + h_s_given_t))


# ----------------------------------------------------------------------------- probability maps, speed


def test_probability_maps_take_the_best_threshold() -> None:
    truth = row("11011")
    # Probabilities: the membrane is 0.3, so thresholds >= 0.3 separate the two cells.
    probability = np.array([[0.9, 0.9, 0.3, 0.9, 0.9]], dtype=np.float32)
    scores = probability_scores(probability, truth, threshold=0.2)
    assert scores["iou"] == pytest.approx(4 / 5)  # at 0.2 the membrane is foreground
    assert scores["vrand_best"] == pytest.approx(1.0) and scores["vrand_best_threshold"] == pytest.approx(0.3)
    assert scores["vinfo_best"] == pytest.approx(1.0) and scores["vinfo_best_threshold"] == pytest.approx(0.3)
    assert scores["threshold"] == 0.2
    # One name per number: V_rand *at* the threshold (0.2: the two cells merge) is not the best one.
    assert scores["vrand"] < 1.0 and scores["vinfo"] < 1.0
    binary = probability_scores((probability > 0.5).astype(np.float32), truth)
    assert binary["vrand_best_threshold"] == binary["threshold"] == 0.5
    assert binary["vrand_best"] == binary["vrand"] == 1.0 and binary["iou"] == 1.0


def test_scores_are_python_floats_under_the_documented_keys() -> None:
    scores = segmentation_scores(row("1101"), row("1001"))
    assert tuple(scores) == keys_of("cells")
    assert all(type(value) is float for value in scores.values())
    perfect = segmentation_scores(row("1101101"), row("1101101"))
    assert perfect == {"iou": 1.0, "dice": 1.0, "pixel_error": 0.0, "membrane_iou": 1.0, "vrand": 1.0, "vinfo": 1.0}


def test_full_size_validation_slices_score_in_range() -> None:
    """Three 512 x 512 slices, as every validation scores (speed: bench/score.py, not a timed test)."""
    rng = np.random.default_rng(0)
    truth = ndimage.binary_opening(rng.random((3, 512, 512)) < 0.7)
    pred = truth ^ (rng.random(truth.shape) < 0.05)
    scores = segmentation_scores(pred, truth)
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    assert scores["iou"] == pytest.approx(iou(pred, truth)) and scores["vrand"] < 1.0


def test_an_empty_prediction_scores_as_singletons() -> None:
    # Truth: two cells of 2 px (11011). An empty prediction is 4 singletons inside them:
    # TP = sum n_ij^2 = 4, sum b^2 = 4 -> FP = 0; sum a^2 = 8 -> FN = 4; V_rand = 8 / 12.
    # V_info: H(S) = log 4, H(T) = log 2, I = H(T) - H(T|S) = log 2 -> 2 log 2 / (log 4 + log 2) = 2/3.
    v_rand, v_info = rand_info_scores(row("00000"), row("11011"))
    assert v_rand == pytest.approx(8 / 12)
    assert v_info == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- the fast path scores as before


def _reference_scores(probability: np.ndarray, truth: np.ndarray, thresholds) -> dict[str, float]:
    """V_rand, its slice mean and V_info as the code before the speed-up computed them: every slice
    rethresholded, thinned and counted from scratch at every threshold, one after the other."""
    truth_cells = [cells(plane) for plane in truth]
    best: dict[str, tuple[float, float]] = {key: (-1.0, 0.0) for key in ("vrand", "vrand_slice_mean", "vinfo")}
    for value in sorted(thresholds):
        counts, slice_rands, infos = RandCounts(), [], []
        for plane, truth_plane in zip(probability, truth_cells):
            pred = thinned_cells(plane > value)
            slice_counts, info = rand_counts(truth_plane, pred), info_score(truth_plane, pred)
            counts = counts + slice_counts
            if info is not None:
                infos.append(info)
                slice_rands.append(slice_counts.v_rand)
        for key, score in zip(best, (counts.v_rand, float(np.mean(slice_rands)), float(np.mean(infos)))):
            if score > best[key][0]:
                best[key] = (score, value)
    return {
        name: value
        for key, (score, at) in best.items()
        for name, value in ((f"{key}_best", score), (f"{key}_best_threshold", at))
    }


def _isbi_like(truth: np.ndarray, seed: int) -> np.ndarray:
    """A probability map like a model's: the truth blurred, with noise, one slice binary and one flat."""
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(truth.astype(np.float32), (0, 1.5, 1.5))
    probability = np.clip(0.85 * smooth + 0.15 * rng.random(truth.shape, dtype=np.float32), 0.0, 1.0)
    probability[0] = truth[0]  # the same mask at every threshold: scored once
    probability[-1] = 0.05  # foreground only at threshold 0.0
    return probability


@pytest.mark.parametrize("workers", [1, 3])
def test_probability_scores_equal_those_of_the_code_before_the_speed_up(workers: int) -> None:
    rng = np.random.default_rng(7)
    truth = ndimage.binary_opening(rng.random((4, 96, 80)) < 0.75)
    cases = [(rng.random(truth.shape, dtype=np.float32), truth), (_isbi_like(truth, 1), truth)]
    if (ISBI / "train-labels.tif").exists():
        from dcn_ray.io.tiff import read_labels

        isbi = read_labels(ISBI / "train-labels.tif", 255)[10:13, :256, :256]
        cases.append((_isbi_like(isbi, 2), isbi))
    thresholds = (0.0, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9)
    for probability, truth in cases:
        scores = probability_scores(probability, truth, thresholds=thresholds, workers=workers)
        reference = _reference_scores(probability, truth, thresholds)
        assert {key: scores[key] for key in reference} == reference  # identical floats, not approximately
        assert scores["iou"] == iou(probability > 0.5, truth)
