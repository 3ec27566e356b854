"""Partly labelled data: which pixels carry a label, and what a loss sees where none does.

A lab labels a few slices, or paints scribbles in napari, whose labels layer holds 0 where nothing
was painted. ``data.foreground`` / ``data.background`` name the painted values (every other value
is unlabelled), or ``data.unlabelled`` names the one value that is (every other value is
background). Without either, every pixel is labelled, as before.

The masks of a split stay bool (foreground); beside them a bool ``labelled`` mask, or None when
every pixel is labelled (the fast path, today's behaviour exactly). A training target holds
:data:`IGNORE` where unlabelled: ``torch.nn.functional.cross_entropy`` leaves it out of its sum
and its mean (its default ``ignore_index``), and every loss of :mod:`dcn_ray.core.loss` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dcn_ray.errors import InputError

#: The target value of an unlabelled pixel: PyTorch's default ``ignore_index``.
IGNORE = -100


def label_masks(
    raw: np.ndarray,
    *,
    foreground: int,
    background: int | None = None,
    unlabelled: int | None = None,
    source: object = "labels",
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(foreground, labelled)`` bool masks of stored label values; ``labelled`` is None when every
    pixel is labelled. Give ``background`` (every other value unlabelled) or ``unlabelled``."""
    if (background is None) == (unlabelled is None):
        raise ValueError("give exactly one of background and unlabelled")
    mask = raw == foreground
    labelled = mask | (raw == background) if background is not None else raw != unlabelled
    if not mask.any():
        values = np.unique(raw)
        shown = ", ".join(str(v) for v in values[:10]) + (", ..." if len(values) > 10 else "")
        raise InputError(f"{source}: no pixel has the foreground value {foreground} (values present: {shown})")
    return mask, None if labelled.all() else labelled


def labelled_slices(labelled: np.ndarray | None, depth: int) -> np.ndarray:
    """Which of ``depth`` slices hold a labelled pixel (bool (Z,)); all of them for ``labelled=None``."""
    if labelled is None:
        return np.ones(depth, dtype=bool)
    return labelled.reshape(depth, -1).any(axis=1)


def foreground_fraction(masks: np.ndarray, labelled: np.ndarray | None) -> float:
    """The foreground share of the labelled pixels (of every pixel for ``labelled=None``)."""
    if labelled is None:
        return float(masks.mean())
    count = int(np.count_nonzero(labelled))
    return float(np.count_nonzero(masks & labelled) / count) if count else 0.0


def restrict(labelled: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
    """``labelled`` cut to the slices ``keep`` (None stays None; all labelled there becomes None)."""
    if labelled is None:
        return None
    part = labelled[keep]
    return None if part.all() else part


def read_truth(source: str | Path, data: Mapping[str, Any], level: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """``(foreground, labelled)`` of a label volume read as a job's ``data`` section says (a checkpoint's
    config): partly labelled where it names ``background`` or ``unlabelled``, else every pixel labelled."""
    from dcn_ray.io.volumes import read_label_values, read_label_volume

    foreground = data.get("foreground", 255)
    background, unlabelled = data.get("background"), data.get("unlabelled")
    if background is None and unlabelled is None:
        return read_label_volume(source, foreground, level), None
    raw = read_label_values(source, level)
    return label_masks(raw, foreground=foreground, background=background, unlabelled=unlabelled, source=source)
