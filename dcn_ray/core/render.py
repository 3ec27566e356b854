"""Render the DCN side branches F1-F3 and predictions as PNG images (numpy and PIL only).

Branch maps are shown as raw foreground probabilities (no per-map normalisation), so the
contrast of branches can be compared by eye, as the paper did.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy.special import expit

from dcn_ray.core.branches import BranchScore, margin
from dcn_ray.kernels import BRANCHES

#: Height in pixels of the caption strip under the montage panels.
CAPTION_HEIGHT = 14
#: White gap in pixels between montage panels.
PANEL_GAP = 4
#: Overlay colours (RGB) and their opacity over the grey slice.
TRUE_POSITIVE = (0, 200, 0)
FALSE_POSITIVE = (230, 0, 0)
FALSE_NEGATIVE = (0, 90, 255)
OVERLAY_ALPHA = 0.5


def branch_image(branch_logits_2d: np.ndarray) -> np.ndarray:
    """Foreground probability (softmax of the 2 logits) of one (2, H, W) branch as uint8 0-255.

    No per-map normalisation, so the contrast of branches can be compared by eye.
    """
    if branch_logits_2d.ndim != 3 or branch_logits_2d.shape[0] != 2:
        raise ValueError(f"branch logits must have shape (2, H, W), got {branch_logits_2d.shape}")
    probability = expit(margin(branch_logits_2d))  # softmax over 2 classes = sigmoid of the margin
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
        captions.append(name if scores is None else f"{name} calibrated {scores[index].calibrated:.3f}")
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
