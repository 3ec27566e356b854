"""Score the DCN side branches F1-F3, name the weak one, and render them as PNG images.

The paper picks the branch that is "not working well enough" by looking at the
maps; :func:`score_branches` and :func:`weak_branch` make that choice a rule.

Inputs are numpy arrays: ``branches`` is a sequence of three arrays of branch
logits (N, 2, H, W) for F1, F2, F3 (class 1 = foreground), ``truth`` is an
(N, H, W) bool mask. The fused logits of the DCN are the sum of the three branches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.special import expit
from scipy.stats import rankdata

from dcn_ray.core.kernels import BRANCHES
from dcn_ray.core.metrics import iou

logger = logging.getLogger(__name__)

#: Height in pixels of the caption strip under the montage panels.
CAPTION_HEIGHT = 14
#: White gap in pixels between montage panels.
PANEL_GAP = 4
#: Overlay colours (RGB) and their opacity over the grey slice.
TRUE_POSITIVE = (0, 200, 0)
FALSE_POSITIVE = (230, 0, 0)
FALSE_NEGATIVE = (0, 90, 255)
OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class BranchScore:
    """How well one side branch separates foreground from background.

    ``contrast``: ROC AUC of the branch's foreground margin (0.5 none, 1.0 perfect);
    ``alone_iou``: IoU of the branch's own argmax; ``drop``: fused IoU minus the IoU
    of the fused output without this branch.
    """

    name: str
    contrast: float
    alone_iou: float
    drop: float

    def as_metrics(self) -> dict[str, float]:
        """MLflow-ready metrics, e.g. ``{"contrast_F1": .., "alone_iou_F1": .., "drop_F1": ..}``."""
        return {
            f"contrast_{self.name}": self.contrast,
            f"alone_iou_{self.name}": self.alone_iou,
            f"drop_{self.name}": self.drop,
        }


def _margin(logits: np.ndarray) -> np.ndarray:
    """Foreground margin logit1 - logit0 of (..., 2, H, W) logits, as float64 (..., H, W)."""
    return logits[..., 1, :, :].astype(np.float64) - logits[..., 0, :, :]


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
    """Contrast, IoU alone and IoU drop of each branch (see :class:`BranchScore`)."""
    _check_branches(branches, truth)
    margins = [_margin(branch) for branch in branches]
    fused = sum(margins)
    fused_iou = iou(fused > 0, truth)
    scores = []
    for index, (name, margin) in enumerate(zip(BRANCHES, margins)):
        others = sum(m for other, m in enumerate(margins) if other != index)
        scores.append(
            BranchScore(
                name=name,
                contrast=auc(margin, truth),
                alone_iou=iou(margin > 0, truth),
                drop=fused_iou - iou(others > 0, truth),
            )
        )
    return tuple(scores)  # type: ignore[return-value]


def _ranks_higher_better(values: Sequence[float]) -> list[int]:
    """Rank 0 for the best; tied values share a rank (number of strictly better values)."""
    return [sum(other > value for other in values) for value in values]


def weak_branch(scores: Sequence[BranchScore]) -> int:
    """Index (0, 1, 2) of the branch that works least well.

    Rule: rank the branches on contrast, on alone_iou and on drop separately
    (higher is better; rank = how many branches are strictly better, so ties
    share a rank), sum the three ranks; the weak branch has the largest sum. Ties
    go to the branch with the lower contrast, then to the higher index (the
    coarser branch).
    """
    if len(scores) != len(BRANCHES):
        raise ValueError(f"expected {len(BRANCHES)} branch scores, got {len(scores)}")
    rank_sums = [0] * len(scores)
    for field in ("contrast", "alone_iou", "drop"):
        for index, rank in enumerate(_ranks_higher_better([getattr(s, field) for s in scores])):
            rank_sums[index] += rank
    return max(range(len(scores)), key=lambda i: (rank_sums[i], -scores[i].contrast, i))


def branch_image(branch_logits_2d: np.ndarray) -> np.ndarray:
    """Foreground probability (softmax of the 2 logits) of one (2, H, W) branch as uint8 0-255.

    No per-map normalisation, so the contrast of branches can be compared by eye.
    """
    if branch_logits_2d.ndim != 3 or branch_logits_2d.shape[0] != 2:
        raise ValueError(f"branch logits must have shape (2, H, W), got {branch_logits_2d.shape}")
    probability = expit(_margin(branch_logits_2d))  # softmax over 2 classes = sigmoid of the margin
    return np.rint(probability * 255.0).astype(np.uint8)


def _gray(image: np.ndarray) -> np.ndarray:
    if image.ndim != 2:
        raise ValueError(f"image must be an (H, W) array, got shape {image.shape}")
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 (H, W) grey or (H, W, 3) RGB array as PNG (via a temporary name)."""
    if array.dtype != np.uint8 or not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise ValueError(f"PNG array must be uint8 (H, W) or (H, W, 3), got {array.dtype} {array.shape}")
    return _save(Image.fromarray(array), Path(path))


def _save(picture: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    picture.save(partial, format="PNG")
    os.replace(partial, path)
    return path


def render_montage(
    image: np.ndarray,
    branches_for_one_slice: Sequence[np.ndarray],
    path: str | os.PathLike[str],
    *,
    scores: Sequence[BranchScore] | None = None,
) -> Path:
    """One grey PNG: input | F1 | F2 | F3 side by side, a caption strip under each panel.

    ``image`` is the (H, W) slice in [0, 1]; each branch is (2, H, W) logits. The
    caption names the panel, with its contrast when ``scores`` is given. Size:
    width 4 W + 3 PANEL_GAP, height H + CAPTION_HEIGHT.
    """
    if len(branches_for_one_slice) != len(BRANCHES):
        raise ValueError(f"expected {len(BRANCHES)} branch maps, got {len(branches_for_one_slice)}")
    if scores is not None and len(scores) != len(BRANCHES):
        raise ValueError(f"expected {len(BRANCHES)} branch scores, got {len(scores)}")
    panels = [_gray(image)] + [branch_image(branch) for branch in branches_for_one_slice]
    height, width = panels[0].shape
    if any(panel.shape != (height, width) for panel in panels):
        raise ValueError(f"branch maps must match the image size {(height, width)}")
    captions = ["input"]
    for index, name in enumerate(BRANCHES):
        captions.append(name if scores is None else f"{name} contrast {scores[index].contrast:.3f}")
    montage = Image.new("L", (4 * width + 3 * PANEL_GAP, height + CAPTION_HEIGHT), color=255)
    draw = ImageDraw.Draw(montage)
    for index, (panel, caption) in enumerate(zip(panels, captions)):
        left = index * (width + PANEL_GAP)
        montage.paste(Image.fromarray(panel), (left, 0))
        draw.text((left + 2, height + 1), caption, fill=0)
    return _save(montage, Path(path))


def render_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """RGB PNG of the slice with true positives, false positives and false negatives coloured.

    Colours: TRUE_POSITIVE (green), FALSE_POSITIVE (red), FALSE_NEGATIVE (blue),
    blended with OVERLAY_ALPHA over the grey slice; true negatives stay grey.
    """
    grey = _gray(image)
    if pred.dtype != np.bool_ or truth.dtype != np.bool_:
        raise ValueError(f"pred and truth must be bool arrays, got {pred.dtype} and {truth.dtype}")
    if pred.shape != grey.shape or truth.shape != grey.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must match the image {grey.shape}")
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float64)
    for mask, colour in (
        (pred & truth, TRUE_POSITIVE),
        (pred & ~truth, FALSE_POSITIVE),
        (~pred & truth, FALSE_NEGATIVE),
    ):
        rgb[mask] = (1.0 - OVERLAY_ALPHA) * rgb[mask] + OVERLAY_ALPHA * np.array(colour, dtype=np.float64)
    return save_png(np.rint(rgb).astype(np.uint8), path)
