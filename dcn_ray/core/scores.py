"""The scores dcn-ray computes, one registry (key, label, direction, target), and scoring by it.

What a score means depends on the **target**, what the foreground is (``data.target``,
``score --target``): ``cells`` (cell interior, ISBI 2012: most pixels are foreground, split by thin
membranes) gets the challenge's V_rand / V_info, exact; ``objects`` (mitochondria, synapses: a
sparse foreground of separate objects) gets object-level precision, recall and F1 at IoU >= 0.5
and the object counts (:mod:`dcn_ray.core.objects`), without a watershed. Both get foreground
IoU (the headline, the paper's metric), Dice and pixel error; the background class's IoU is
``membrane_iou`` for cells and ``background_iou`` for objects. ``auto`` decides by the labels'
foreground fraction (:func:`resolve_target`).

Training logs each score as ``val_<key>``, a trial's test split as ``test_<key>``, both from the
argmax (foreground probability > 0.5); the headline chooses the checkpoint (``best_val_iou``), the
searcher's mode, and leads reports and registry versions. ``vrand`` is always V_rand *at* the
threshold (0.5 in a sweep); V_rand maximised over thresholds, what the challenge reports, is
``vrand_best`` (``score`` and ``predict --labels`` give both). A new score is one entry in
:data:`SCORES` (and its function).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from dcn_ray.core import metrics, objects

#: What the foreground is: cell interior (V_rand / V_info) or separate objects (object F1).
TARGETS = ("cells", "objects")
#: ``auto``: cells where at least this fraction of the labelled pixels is foreground (ISBI 2012: 0.78;
#: the EPFL mitochondria: 0.08).
CELLS_FRACTION = 0.5


@dataclass(frozen=True)
class Score:
    key: str
    label: str
    #: The score of a bool prediction against its bool truth, (Y, X) or (Z, Y, X); None for the
    #: scores computed together (V_rand / V_info from one watershed, the object scores from one labelling).
    function: Callable[[np.ndarray, np.ndarray], float] | None = None
    #: None: a count (the objects), not a score with a direction.
    higher_is_better: bool | None = True
    targets: tuple[str, ...] = TARGETS

    def better(self, new: float, old: float) -> bool:
        """Whether ``new`` is a strictly better value of this score than ``old``."""
        if self.higher_is_better is None:
            raise ValueError(f"{self.key} is a count, not a score with a direction")
        return new > old if self.higher_is_better else new < old


#: Every score, in report order.
SCORES = (
    Score("iou", "IoU", metrics.iou),
    Score("dice", "Dice", metrics.dice),
    Score("pixel_error", "pixel error", metrics.pixel_error, higher_is_better=False),
    Score("membrane_iou", "membrane IoU", metrics.membrane_iou, targets=("cells",)),
    Score("background_iou", "background IoU", metrics.membrane_iou, targets=("objects",)),
    Score("vrand", "V_rand at 0.5", targets=("cells",)),
    Score("vinfo", "V_info at 0.5", targets=("cells",)),
    Score("object_precision", "object precision", targets=("objects",)),
    Score("object_recall", "object recall", targets=("objects",)),
    Score("object_f1", "object F1", targets=("objects",)),
    Score("objects_true", "truth objects", higher_is_better=None, targets=("objects",)),
    Score("objects_pred", "predicted objects", higher_is_better=None, targets=("objects",)),
)
SCORE_KEYS = tuple(score.key for score in SCORES)
#: The region scores: one watershed per slice gives both, so they are computed together.
REGION_KEYS = ("vrand", "vinfo")
#: The object scores: one labelling per slice gives them all.
OBJECT_KEYS = ("object_precision", "object_recall", "object_f1", "objects_true", "objects_pred")
#: Per target, the score beside the headline in short listings (validation columns, progress).
SECONDARY = {"cells": ("vrand", "vinfo"), "objects": ("object_f1",)}
#: The score that chooses checkpoints, trials and registry versions.
HEADLINE = "iou"
HEADLINE_SCORE = next(score for score in SCORES if score.key == HEADLINE)
#: Ray Tune's mode for the headline.
HEADLINE_MODE = "max" if HEADLINE_SCORE.higher_is_better else "min"
#: Its validation value at an evaluation, and the best of a run so far (Tune's metric).
VAL_HEADLINE, BEST_VAL_HEADLINE = f"val_{HEADLINE}", f"best_val_{HEADLINE}"
#: The headline on the test split (a trial scores it once, with the checkpoint validation chose).
TEST_HEADLINE = f"test_{HEADLINE}"
#: The test-split columns of a trial, of every target (a trial has those of its own; none without a test split).
TEST_COLUMNS = tuple(f"test_{key}" for key in SCORE_KEYS)
#: The validation columns a results table keeps beside the best validation IoU (every target's).
VAL_COLUMNS = tuple(dict.fromkeys(f"val_{key}" for keys in SECONDARY.values() for key in keys))


def keys_of(target: str) -> tuple[str, ...]:
    """The score keys of ``target``, in report order."""
    check_target(target)
    return tuple(score.key for score in SCORES if target in score.targets)


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    return target


def resolve_target(target: str, foreground: float) -> str:
    """``cells`` / ``objects`` as given; ``auto``: cells where ``foreground`` (the labels' foreground
    fraction) is at least :data:`CELLS_FRACTION`, else objects."""
    if target == "auto":
        return "cells" if foreground >= CELLS_FRACTION else "objects"
    return check_target(target)


def target_line(target: str, resolved: str, foreground: float) -> str:
    """The first line a command says about its target: which, why, and how to change it."""
    what = {
        "cells": "cell interior: V_rand / V_info under the ISBI 2012 protocol",
        "objects": "separate objects: object precision / recall / F1 at IoU >= 0.5 and the object counts",
    }[resolved]
    if target != "auto":
        return f"target: {resolved} ({what}), as set"
    other = "objects" if resolved == "cells" else "cells"
    rule = ">=" if resolved == "cells" else "<"
    return (
        f"target: {resolved} ({what}), decided from the labels: {100 * foreground:.1f} % foreground "
        f"{rule} {100 * CELLS_FRACTION:g} %; set data.target: {other} (score/predict: --target {other}) if wrong"
    )


def label(column: str) -> str:
    """``test_vrand`` -> ``test V_rand``, ``best_val_iou`` -> ``best val IoU``."""
    for prefix in ("best_val_", "val_", "test_"):
        if column.startswith(prefix):
            key = column[len(prefix) :]
            name = next((s.label for s in SCORES if s.key == key), key)
            return f"{prefix.rstrip('_').replace('_', ' ')} {name}"
    return column


#: The pixel scores from one confusion count (tp, fp, fn, tn): the same floats as their functions, one pass.
_FROM_COUNTS: dict[str, Callable[[int, int, int, int], float]] = {
    "iou": lambda tp, fp, fn, tn: 1.0 if tp + fp + fn == 0 else float(tp / (tp + fp + fn)),
    "dice": lambda tp, fp, fn, tn: 1.0 if 2 * tp + fp + fn == 0 else float(2.0 * tp / (2 * tp + fp + fn)),
    "pixel_error": lambda tp, fp, fn, tn: float((fp + fn) / (tp + fp + fn + tn)),
    "membrane_iou": lambda tp, fp, fn, tn: 1.0 if tn + fp + fn == 0 else float(tn / (tn + fp + fn)),
    "background_iou": lambda tp, fp, fn, tn: 1.0 if tn + fp + fn == 0 else float(tn / (tn + fp + fn)),
}


def _confusion(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    tp, predicted, true = (int(np.count_nonzero(a)) for a in (pred & truth, pred, truth))
    return tp, predicted - tp, true - tp, pred.size - predicted - true + tp


def _pixel_scores(pred: np.ndarray, truth: np.ndarray, target: str) -> dict[str, float]:
    entries = [s for s in SCORES if s.function is not None and target in s.targets]
    if not all(s.key in _FROM_COUNTS for s in entries):
        return {s.key: s.function(pred, truth) for s in entries}  # type: ignore[misc]
    metrics.iou(pred, truth)  # the shape and type checks of every pixel score
    counts = _confusion(pred, truth)
    return {s.key: _FROM_COUNTS[s.key](*counts) for s in entries}


def segmentation_scores(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    target: str = "cells",
    labelled: np.ndarray | None = None,
    workers: int | None = None,
) -> dict[str, float]:
    """Every score of ``target`` for a binary prediction, keyed and ordered as :data:`SCORES` (python floats).

    Cells: V_rand and V_info from one watershed per slice, on ``workers`` threads
    (:func:`~dcn_ray.core.metrics.rand_info_scores`). Objects: one labelling per slice, no watershed.
    ``labelled`` (bool, as ``truth``; None: every pixel) restricts every score to the labelled pixels
    (:func:`labelled_scores`).
    """
    if labelled is not None:
        return labelled_scores(pred, truth, labelled, target=target, workers=workers)
    computed = _pixel_scores(pred, truth, target)
    computed.update(_joint_scores(pred, truth, target, workers))
    return {key: computed[key] for key in keys_of(target)}


def _joint_scores(pred: np.ndarray, truth: np.ndarray, target: str, workers: int | None) -> dict[str, float]:
    """The scores computed together: V_rand and V_info (cells) or the object scores (objects)."""
    if target == "cells":
        return dict(zip(REGION_KEYS, metrics.rand_info_scores(pred, truth, workers=workers)))
    return objects.object_counts(pred, truth, workers=workers).scores()


def labelled_scores(
    pred: np.ndarray, truth: np.ndarray, labelled: np.ndarray, *, target: str = "cells", workers: int | None = None
) -> dict[str, float]:
    """:func:`segmentation_scores` of partly labelled truth: what the prediction or the truth hold at
    unlabelled pixels changes no score.

    Slices without a labelled pixel are left out. The pixel scores count the labelled pixels alone;
    V_rand and V_info score the prediction cut to the labelled pixels (background elsewhere, so the
    watershed may flood across unlabelled pixels) against the truth cells of labelled foreground;
    the object scores likewise compare the prediction's and the truth's labelled foreground.
    """
    if labelled.shape != truth.shape or labelled.dtype != np.bool_:
        raise ValueError(f"labelled must be a bool array shaped as the truth {truth.shape}")
    shape = (-1,) + truth.shape[-2:]
    keep = labelled.reshape(shape).any(axis=(1, 2))
    if not keep.any():
        raise ValueError("no labelled pixel to score")
    pred, truth, labelled = (a.reshape(shape)[keep] for a in (pred, truth, labelled))
    truth = truth & labelled
    computed = _pixel_scores(pred[labelled][None], truth[labelled][None], target)
    computed.update(_joint_scores(pred & labelled, truth, target, workers))
    return {key: computed[key] for key in keys_of(target)}


def probability_scores(
    probability: np.ndarray,
    truth: np.ndarray,
    *,
    target: str = "cells",
    threshold: float = 0.5,
    thresholds: Sequence[float] = metrics.ISBI_THRESHOLDS,
    workers: int | None = None,
    progress: metrics.Progress | None = None,
    labelled: np.ndarray | None = None,
) -> dict[str, float]:
    """Scores of a foreground-probability map in [0, 1] (foreground where probability > threshold).

    Every score of :func:`segmentation_scores` at ``threshold`` (so ``vrand`` is V_rand *at* it, as a
    sweep's table gives it). Cells add ``vrand_best`` and ``vinfo_best``, each maximised over
    ``thresholds`` as the challenge does, with ``vrand_best_threshold`` / ``vinfo_best_threshold``
    saying which gave them (the lowest on ties), and ``vrand_slice_mean_best`` (and its threshold):
    the challenge script's mean of per-slice V_rand, maximised alike, the number its leaderboard
    reports. A map holding only 0 and 1 is a segmentation: every threshold in [0, 1) gives the same
    mask, and ``threshold`` is reported. The watershed of each threshold is shared by all of them
    (:func:`~dcn_ray.core.metrics.rand_info_at`), told to ``progress`` slice by slice. Objects need no
    other threshold: nothing is maximised (and it takes milliseconds a slice). ``labelled`` (partly
    labelled truth) scores as :func:`labelled_scores` does, at every threshold: the map is 0 (background)
    at unlabelled pixels, whatever it held there.
    """
    if not isinstance(probability, np.ndarray) or probability.dtype.kind != "f":
        raise ValueError(f"probability must be a float numpy array, got {getattr(probability, 'dtype', None)}")
    if not thresholds or not all(0.0 <= t < 1.0 for t in thresholds) or not 0.0 <= threshold < 1.0:
        raise ValueError("thresholds must lie in [0, 1)")
    mask, at = probability > threshold, float(threshold)
    if target != "cells":
        return {**segmentation_scores(mask, truth, target=target, workers=workers, labelled=labelled), "threshold": at}
    if labelled is not None:  # cells of partly labelled truth: its labelled slices, the map cut to its pixels
        pixels = _pixel_scores(mask[labelled][None], (truth & labelled)[labelled][None], target)
        keep = labelled.reshape((-1,) + truth.shape[-2:]).any(axis=(1, 2))
        probability, truth, labelled = (
            a.reshape((-1,) + truth.shape[-2:])[keep] for a in (probability, truth, labelled)
        )
        probability, truth = np.where(labelled, probability, np.float32(0.0)), truth & labelled
    else:
        pixels = _pixel_scores(mask, truth, target)
    scores: dict[str, float] = {**pixels, "threshold": at}
    binary = bool(np.all((probability == 0.0) | (probability == 1.0)))
    best_over = [at] if binary or not truth.any() else sorted(float(t) for t in thresholds)
    values = sorted({*best_over, at})
    measured = metrics.rand_info_at(probability, truth, values, workers=workers, progress=progress)
    scores["vrand"], _, scores["vinfo"] = measured[values.index(at)]
    chosen = [measured[values.index(value)] for value in best_over]
    for key, (score, value) in metrics.best_of(chosen, best_over).items():
        scores[f"{key}_best"], scores[f"{key}_best_threshold"] = score, value
    return scores


def baseline_scores(
    truth: np.ndarray, labelled: np.ndarray | None = None, target: str = "cells"
) -> dict[str, dict[str, float]]:
    """Scores of the trivial predictions on ``truth``: ``all_foreground`` and ``all_background``.

    The floor any model must beat on the same slices (on ISBI 2012 all-foreground IoU is about 0.8);
    on the ``labelled`` pixels only for partly labelled truth.
    """
    return {
        "all_foreground": segmentation_scores(np.ones_like(truth, dtype=bool), truth, labelled=labelled, target=target),
        "all_background": segmentation_scores(
            np.zeros_like(truth, dtype=bool), truth, labelled=labelled, target=target
        ),
    }
