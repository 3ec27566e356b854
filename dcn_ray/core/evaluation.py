"""Score predictions against ground truth the way ``dcn-ray score`` and ``predict --labels`` report it.

One code path for both: a foreground-probability (or binary) stack and a truth mask go through
:func:`score_probabilities`, which adds the trivial baselines' IoU on the same slices so the
floor is always shown beside the score. The metrics themselves are :mod:`dcn_ray.core.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dcn_ray.core.metrics import ISBI_THRESHOLDS, iou
from dcn_ray.core.scores import baseline_scores, probability_scores
from dcn_ray.errors import InputError

if TYPE_CHECKING:
    from dcn_ray.core.dataset import Dataset


def reported_split(dataset: Dataset) -> dict[str, Any]:
    """Which split a sweep's table reports, and the trivial baselines' scores on it (JSON-able).

    ``{"split": "test" | "validation", "slices": [...], "baselines": {"all_foreground": {...},
    "all_background": {...}}}``: the test split when the dataset has one, else the validation split
    (which also chose the checkpoints, so its scores are biased upwards).
    """
    if dataset.test_masks is not None:
        split, slices, masks, labelled = "test", dataset.test_slices, dataset.test_masks, dataset.test_labelled
    else:
        split, slices, masks, labelled = "validation", dataset.val_slices, dataset.val_masks, dataset.val_labelled
    return {"split": split, "slices": [int(z) for z in slices], "baselines": baseline_scores(masks, labelled)}


def score_probabilities(
    probability: np.ndarray,
    truth: np.ndarray,
    *,
    threshold: float = 0.5,
    thresholds: Sequence[float] = ISBI_THRESHOLDS,
) -> dict[str, float]:
    """:func:`~dcn_ray.core.scores.probability_scores` plus ``slices`` and the baselines' IoU.

    ``baseline_all_foreground_iou`` / ``baseline_all_background_iou``: the IoU of predicting every
    pixel as foreground / background on the same slices.
    """
    if probability.shape != truth.shape:
        raise InputError(f"the prediction has shape {probability.shape} (Z, Y, X) but the truth has {truth.shape}")
    scores = probability_scores(probability, truth, threshold=threshold, thresholds=thresholds)
    scores["baseline_all_foreground_iou"] = iou(np.ones_like(truth), truth)
    scores["baseline_all_background_iou"] = iou(np.zeros_like(truth), truth)
    scores["slices"] = int(truth.reshape((-1,) + truth.shape[-2:]).shape[0])
    return scores


def score_stacks(
    prediction: Path,
    truth: Path,
    *,
    foreground: int | str = 255,
    threshold: float = 0.5,
    thresholds: Sequence[float] = ISBI_THRESHOLDS,
    invert: bool = False,
) -> dict[str, float]:
    """Score a prediction stack against a label stack (TIFF, OME-Zarr, zarr or ``file.h5:/dataset``).

    ``prediction`` holds the foreground probability or a mask, read as
    :func:`dcn_ray.io.predictions.read_prediction` says (``prediction_read_as`` tells how); with
    ``invert`` it holds the membrane (background) probability. ``truth`` is a label stack whose ``foreground`` value
    marks cell interior (ISBI: 255), or ``"color"`` for RGB labels.
    """
    from dcn_ray.io.predictions import read_prediction
    from dcn_ray.io.volumes import read_label_volume

    mask = read_label_volume(truth, foreground)
    check_truth(mask, truth)
    probability, read_as = read_prediction(prediction)
    if invert:
        probability = 1.0 - probability
    if probability.shape != mask.shape:
        raise InputError(
            f"prediction {prediction} has shape {probability.shape} (Z, Y, X) but truth {truth} has {mask.shape}"
        )
    scores: dict[str, Any] = score_probabilities(probability, mask, threshold=threshold, thresholds=thresholds)
    scores["prediction_read_as"] = read_as
    return scores


def check_truth(mask: np.ndarray, source: object) -> None:
    """InputError unless the truth has foreground and background (IoU and membrane IoU need both)."""
    if not mask.any():
        raise InputError(f"{source}: the truth has no foreground pixel; IoU against it means nothing")
    if mask.all():
        raise InputError(f"{source}: the truth has no background (membrane) pixel; membrane IoU and V_rand need one")


def parse_foreground(text: str) -> int | str:
    """``"255"`` -> 255, ``"color"`` -> "color"; anything else: InputError."""
    text = text.strip()
    if text == "color":
        return text
    try:
        return int(text)
    except ValueError:
        raise InputError(
            f"--foreground {text!r}: give the truth's foreground label value (e.g. 255) or 'color'"
        ) from None


def parse_thresholds(text: str) -> tuple[float, ...]:
    """``"0.3,0.5"`` -> (0.3, 0.5); each in [0, 1), else InputError."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--thresholds {text!r}: give comma-separated numbers, e.g. 0.3,0.5") from None
    if not values or not all(0.0 <= value < 1.0 for value in values):
        raise InputError(f"--thresholds {text!r}: every threshold must lie in [0, 1)")
    return values


def format_scores(scores: Mapping[str, float]) -> str:
    """One line: IoU, Dice, membrane IoU, pixel error, V_rand and V_info (with their thresholds).

    A second line gives the trivial baselines' IoU when ``scores`` holds them.
    """
    parts = [
        f"{label} {scores[key]:.4f}"
        for key, label in (
            ("iou", "IoU"),
            ("dice", "Dice"),
            ("membrane_iou", "membrane IoU"),
            ("pixel_error", "pixel error"),
        )
    ]
    for key, label in (("vrand", "V_rand"), ("vrand_slice_mean", "V_rand slice mean"), ("vinfo", "V_info")):
        if key not in scores:  # the slice mean: only for probability maps
            continue
        at = scores.get(f"{key}_threshold")
        parts.append(f"{label} {scores[key]:.4f}" + (f" (threshold {at:g})" if at is not None else ""))
    line = "  ".join(parts)
    if "threshold" in scores:
        line = f"threshold {scores['threshold']:g}: " + line
    if "baseline_all_foreground_iou" in scores:
        slices = scores.get("slices")
        where = f" on the same {slices} slice{'s' if slices != 1 else ''}" if slices else ""
        line += (
            f"\nbaselines{where}: all-foreground IoU {scores['baseline_all_foreground_iou']:.4f}, "
            f"all-background IoU {scores['baseline_all_background_iou']:.4f}"
        )
    return line
