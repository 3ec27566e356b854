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

from dcn_ray.core.labels import LabelCheck
from dcn_ray.core.metrics import ISBI_THRESHOLDS, Progress, iou
from dcn_ray.core.partial import label_masks, labelled_slices
from dcn_ray.core.scores import (
    REGION_KEYS,
    SCORE_KEYS,
    SCORES,
    TARGETS,
    baseline_scores,
    probability_scores,
    resolve_target,
    target_line,
)
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
    baselines = baseline_scores(masks, labelled, dataset.target)
    return {"split": split, "slices": [int(z) for z in slices], "target": dataset.target, "baselines": baselines}


def score_probabilities(
    probability: np.ndarray,
    truth: np.ndarray,
    *,
    target: str = "auto",
    threshold: float = 0.5,
    thresholds: Sequence[float] = ISBI_THRESHOLDS,
    progress: Progress | None = None,
    labelled: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`~dcn_ray.core.scores.probability_scores` plus ``slices``, ``target`` and the baselines' IoU.

    ``target`` "auto" is decided from the truth's foreground fraction (``target_line`` says how).
    ``baseline_all_foreground_iou`` / ``baseline_all_background_iou``: the IoU of predicting every
    pixel as foreground / background on the same slices. ``labelled`` (partly labelled truth,
    :mod:`dcn_ray.core.partial`): every score, the fraction and the baselines count the labelled
    pixels alone, ``slices`` the slices holding one; ``labelled_pixels`` / ``pixels`` and
    ``labelled_slices`` / ``given_slices`` say how many were labelled.
    """
    if probability.shape != truth.shape:
        raise InputError(f"the prediction has shape {probability.shape} (Z, Y, X) but the truth has {truth.shape}")
    planes = (-1,) + truth.shape[-2:]
    fraction = LabelCheck.of(truth.reshape(planes), None if labelled is None else labelled.reshape(planes)).stack
    resolved = resolve_target(target, fraction)
    scores: dict[str, Any] = probability_scores(
        probability, truth, target=resolved, threshold=threshold, thresholds=thresholds, progress=progress,
        labelled=labelled,
    )  # fmt: skip
    known = truth if labelled is None else truth[labelled].reshape(1, -1)
    scores["baseline_all_foreground_iou"] = iou(np.ones_like(known), known)
    scores["baseline_all_background_iou"] = iou(np.zeros_like(known), known)
    scores["slices"] = int(truth.reshape(planes).shape[0])
    if labelled is not None:
        held = labelled_slices(labelled.reshape(planes), scores["slices"])
        scores.update(labelled_pixels=int(np.count_nonzero(labelled)), pixels=int(labelled.size))
        scores.update(labelled_slices=int(held.sum()), given_slices=scores["slices"], slices=int(held.sum()))
    scores["target"] = resolved
    scores["target_line"] = target_line(target, resolved, fraction)
    return scores


def score_stacks(
    prediction: Path,
    truth: Path,
    *,
    foreground: int | str = 255,
    target: str = "auto",
    threshold: float = 0.5,
    thresholds: Sequence[float] = ISBI_THRESHOLDS,
    invert: bool = False,
    slices: str | None = None,
    progress: Progress | None = None,
    background: int | None = None,
    unlabelled: int | None = None,
) -> dict[str, Any]:
    """Score a prediction stack against a label stack (TIFF, OME-Zarr, zarr or ``file.h5:/dataset``).

    ``prediction`` holds the foreground probability or a mask, read as
    :func:`dcn_ray.io.predictions.read_prediction` says (``prediction_read_as`` tells how); with
    ``invert`` it holds the membrane (background) probability. ``truth`` is a label stack whose ``foreground`` value
    marks the foreground (ISBI: 255, cell interior), or ``"color"`` for RGB labels. ``slices`` (as
    ``data.split`` writes them: "20:28", "3,5,9") picks the truth's slices the prediction holds; a
    prediction as deep as the truth is cut alike. ``background`` or ``unlabelled`` (as ``data.background``
    / ``data.unlabelled`` say it: napari's labels layer paints 1 and 2, 0 unpainted) make the truth
    partly labelled: only its labelled pixels are scored.
    """
    from dcn_ray.core.dataset import parse_split
    from dcn_ray.io.predictions import read_prediction

    mask, labelled = _read_truth(truth, foreground, background, unlabelled)
    probability, read_as = read_prediction(prediction)
    if slices is not None:
        chosen = parse_split(slices, len(mask), name="--slices")
        if len(probability) == len(mask) != len(chosen):
            probability = probability[chosen]
        mask, labelled = mask[chosen], None if labelled is None else labelled[chosen]
    if labelled is None:
        check_truth(mask, truth)
    else:
        if not labelled.any():
            where = f"the slices --slices {slices} picks" if slices is not None else "it"
            raise InputError(f"{truth}: no pixel of {where} is labelled (foreground {foreground}); nothing to score")
        check_truth(mask[labelled].reshape(1, -1), f"{truth} (its labelled pixels)")
    if invert:
        probability = 1.0 - probability
    if probability.shape != mask.shape:
        hint = "" if slices is not None else "; --slices A:B picks the truth's slices the prediction holds"
        raise InputError(
            f"prediction {prediction} has shape {probability.shape} (Z, Y, X) but truth {truth} has {mask.shape}"
            + (f" (--slices {slices})" if slices is not None else "")
            + hint
        )
    scores = score_probabilities(
        probability, mask, target=target, threshold=threshold, thresholds=thresholds, progress=progress,
        labelled=labelled,
    )  # fmt: skip
    scores["prediction_read_as"] = read_as
    return scores


def _read_truth(
    truth: Path, foreground: int | str, background: int | None, unlabelled: int | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(foreground, labelled)`` of the truth: ``labelled`` a bool mask where ``background`` or
    ``unlabelled`` is given (even when every pixel is labelled), else None."""
    from dcn_ray.io.volumes import read_label_values, read_label_volume

    if background is None and unlabelled is None:
        return read_label_volume(truth, foreground), None
    if background is not None and unlabelled is not None:
        raise InputError("--background and --unlabelled: give one (background: every other value is unlabelled)")
    if not isinstance(foreground, int):
        raise InputError(f"--foreground {foreground}: partly labelled truth needs an integer foreground value")
    raw = read_label_values(truth)
    mask, labelled = label_masks(raw, foreground=foreground, background=background, unlabelled=unlabelled, source=truth)
    return mask, np.ones_like(mask) if labelled is None else labelled


def matching_slices(
    label_shape: Sequence[int], input_shape: Sequence[int], slices: str | None, labels: object
) -> list[int] | None:
    """The slices of a label stack that an input of ``input_shape`` holds: None for all of them (same shape),
    else those ``slices`` names (``--label-slices``, as data.split writes them); InputError where they differ."""
    label_shape, input_shape = tuple(label_shape), tuple(input_shape)
    if slices is None:
        if label_shape != input_shape:
            hint = ""
            if label_shape[1:] == input_shape[1:] and label_shape[0] > input_shape[0]:
                hint = f"; give the labels' slices the input holds, e.g. --label-slices 0:{input_shape[0]}"
            raise InputError(
                f"--labels {labels} have shape {label_shape} (Z, Y, X) but the input has {input_shape}{hint}"
            )
        return None
    from dcn_ray.core.dataset import parse_split

    chosen = parse_split(slices, label_shape[0], name="--label-slices")
    if (len(chosen), *label_shape[1:]) != input_shape:
        raise InputError(
            f"--label-slices {slices} picks {len(chosen)} slice(s) of --labels {labels} {label_shape} (Z, Y, X), "
            f"but the input has {input_shape}"
        )
    return chosen


def check_truth(mask: np.ndarray, source: object) -> None:
    """InputError unless the truth has foreground and background (IoU and background IoU need both)."""
    if not mask.any():
        raise InputError(f"{source}: the truth has no foreground pixel; IoU against it means nothing")
    if mask.all():
        raise InputError(f"{source}: the truth has no background pixel; background IoU and V_rand need one")


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


def parse_target(text: str) -> str:
    """``--target``: auto, cells or objects; anything else: InputError."""
    if text not in ("auto", *TARGETS):
        raise InputError(f"--target {text!r}: give auto, cells (cell interior) or objects (mitochondria, synapses)")
    return text


def format_scores(scores: Mapping[str, Any]) -> str:
    """One line of the target's scores, each named as the registry names it: pixel scores, then V_rand /
    V_info at the threshold and at their best threshold (cells) or the object scores (objects).

    A second line gives the trivial baselines' IoU when ``scores`` holds them.
    """
    at = scores.get("threshold")
    names = {s.key: s.label.replace(" at 0.5", "") for s in SCORES}
    parts = []
    for key in SCORE_KEYS:
        if key not in scores:
            continue
        value = scores[key]
        if key in REGION_KEYS and at is not None:
            parts.append(f"{names[key]} (at {at:g}) {value:.4f}")
        else:
            parts.append(f"{names[key]} {value:.0f}" if key.startswith("objects_") else f"{names[key]} {value:.4f}")
    for key, label in (
        ("vrand_best", "V_rand best"),
        ("vrand_slice_mean_best", "V_rand slice-mean best (the challenge's)"),
        ("vinfo_best", "V_info best"),
    ):
        if key in scores:
            parts.append(f"{label} {scores[key]:.4f} (threshold {scores[f'{key}_threshold']:g})")
    line = "  ".join(parts)
    if at is not None:
        line = f"threshold {at:g}: " + line
    if "baseline_all_foreground_iou" in scores:
        slices = scores.get("slices")
        where = f" on the same {slices} slice{'s' if slices != 1 else ''}" if slices else ""
        where += " (their labelled pixels)" if "labelled_pixels" in scores else ""
        line += (
            f"\nbaselines{where}: all-foreground IoU {scores['baseline_all_foreground_iou']:.4f}, "
            f"all-background IoU {scores['baseline_all_background_iou']:.4f}"
        )
    if "labelled_pixels" in scores:
        line += "\n" + labelled_line(scores)
    return line


def labelled_line(scores: Mapping[str, Any]) -> str:
    """How much of partly labelled truth was scored: pixels and slices labelled, of those given."""
    pixels, labelled = scores["pixels"], scores["labelled_pixels"]
    return (
        f"labelled: {labelled} of {pixels} pixels ({100 * labelled / pixels:.1f} %), on "
        f"{scores['labelled_slices']} of {scores['given_slices']} slices; unlabelled pixels count in no score"
    )
